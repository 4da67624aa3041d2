package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/ids"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// A voter whose data dir was wiped (a replaced disk, a reinstalled host)
// and that comes back under its old node id and raft address would still
// be a voter in everyone's configuration, with none of the log it
// acknowledged: an empty log votes for any candidate, so a stale one
// could win with its vote and undo committed writes.
//
// So each coordinator's raft state carries an incarnation, a random id
// written into DataDir/raft with the state's first run and lost with it.
// The leader records in the FSM (SetServerIncarnation) the incarnation of
// every server it sees holding raft state. A node that starts without raft
// state keeps its raft listener shut (gatedListener: it neither answers
// votes nor takes entries) until the configurations its peers report show
// it is not a voter recorded under another incarnation, and no voter at
// its raft address under another id. Until then it reports lost_state in Status,
// and the leader, seeing that, removes it from the configuration: it took
// no part in raft, so quorum is what it already was. The node then opens
// its listener and joins like any new coordinator (a non-voter, promoted
// once caught up). A node that has raft state never waits.

// incarnationFile is the name, in DataDir/raft, of the incarnation file.
const incarnationFile = "incarnation"

// gatedListener is raft's listener; while shut it closes every connection
// it accepts, so peers see this node as down.
type gatedListener struct {
	net.Listener
	open atomic.Bool
}

// Accept returns the next connection once the gate is open.
func (l *gatedListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil || l.open.Load() {
			return conn, err
		}
		conn.Close()
	}
}

// checkPartialWipe refuses raft snapshots without the log store (noLogStore:
// raft.db is not there): the node would come back without the term and
// vote it persisted, free to vote twice in one term.
func checkPartialWipe(dir string, snaps raft.SnapshotStore, noLogStore bool) error {
	if !noLogStore {
		return nil
	}
	list, err := snaps.List()
	if err != nil {
		return fmt.Errorf("list raft snapshots: %w", err)
	}
	if len(list) > 0 {
		return fmt.Errorf("%s holds raft snapshots but no raft.db (its log, term and vote): the raft state is damaged; "+
			"move %s aside to rejoin as a new server, or restore raft.db", dir, dir)
	}
	return nil
}

// noRaftState reports whether dir holds no raft state: no log entry, no
// snapshot and no peers.json about to force a configuration.
func noRaftState(dir string, store *raftboltdb.BoltStore, snaps raft.SnapshotStore) (bool, error) {
	last, err := store.LastIndex()
	if err != nil {
		return false, fmt.Errorf("read raft log: %w", err)
	}
	list, err := snaps.List()
	if err != nil {
		return false, fmt.Errorf("list raft snapshots: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, PeersFile)); err == nil {
		return false, nil
	}
	return last == 0 && len(list) == 0, nil
}

// loadIncarnation returns the incarnation of the raft state in dir. A
// node without raft state always gets a new one (whatever file a partial
// wipe left); one with state keeps its own, or gets one the first time a
// build that knows incarnations opens it.
func loadIncarnation(dir string, fresh bool) (string, error) {
	path := filepath.Join(dir, incarnationFile)
	if !fresh {
		b, err := os.ReadFile(path)
		if err == nil && len(strings.TrimSpace(string(b))) > 0 {
			return strings.TrimSpace(string(b)), nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("read raft incarnation: %w", err)
		}
	}
	inc := ids.Random(32)
	if err := writeFileSync(path, []byte(inc+"\n")); err != nil {
		return "", fmt.Errorf("write raft incarnation: %w", err)
	}
	return inc, nil
}

// writeFileSync writes a small file through a temp file, fsync and rename,
// and syncs its directory.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// maxIncarnationScan bounds how many unapplied log entries a Status answer
// reads through for incarnation records.
const maxIncarnationScan = 4096

// statusServers is this node's latest raft configuration, whether it is
// committed, and, for each server, the
// incarnation its log records for each server: its FSM's, updated by the
// SetServerIncarnation entries it holds that the FSM has not applied yet
// (a node restarted applies nothing until a leader tells it the commit
// index, and raft hands entries to the FSM before the FSM applies them,
// so the FSM alone could miss a record the log holds). complete is false
// when that tail was too long to read or could not be read; committed is
// false when the tail holds a configuration entry past this node's commit
// index, or could not be read (every entry up to the FSM's applied index
// is committed).
func (c *Coordinator) statusServers() (servers []*vbatchv1.StatusServer, complete, committed bool) {
	r := c.raftNode.raft
	// The last index first: a configuration read after it is as new as
	// the records or newer, never older than a record it is judged with.
	last := r.LastIndex()
	f := r.GetConfiguration()
	if f.Error() != nil {
		return nil, false, false
	}
	conf := f.Configuration().Servers
	if len(conf) == 0 {
		return nil, true, false
	}
	commit := r.CommitIndex()
	// The FSM's applied index before its records: the records are then as
	// of that index or later, and reading the entries after it again over
	// them ends where the log ends.
	applied := c.fsm.AppliedIndex()
	var recorded map[string]string
	c.fsm.View(func(s *fsm.State) { recorded = maps.Clone(s.Incarnations) })
	var confIndex uint64
	complete = c.pendingIncarnations(applied, last, recorded, &confIndex)
	committed = complete && confIndex <= commit
	servers = make([]*vbatchv1.StatusServer, 0, len(conf))
	for _, srv := range conf {
		servers = append(servers, &vbatchv1.StatusServer{
			Id: string(srv.ID), Address: string(srv.Address), Voter: srv.Suffrage == raft.Voter,
			Incarnation: recorded[string(srv.ID)],
		})
	}
	return servers, complete, committed
}

// pendingIncarnations applies to recorded, in log order, the
// SetServerIncarnation entries from after applied to last, and sets
// confIndex to the index of the last configuration entry among them. It
// reports false if there were too many to read or one could not be read.
func (c *Coordinator) pendingIncarnations(applied, last uint64, recorded map[string]string, confIndex *uint64) bool {
	if last <= applied {
		return true
	}
	if last-applied > maxIncarnationScan {
		return false
	}
	for i := applied + 1; i <= last; i++ {
		// A fresh entry each time: one from the log cache shares its
		// bytes with raft's, and decoding the next one from disk into it
		// would overwrite them.
		var entry raft.Log
		if err := c.raftNode.logs.GetLog(i, &entry); err != nil {
			return false
		}
		if entry.Type == raft.LogConfiguration {
			*confIndex = i
		}
		if entry.Type != raft.LogCommand || envelopeType(entry.Data) != vbatchv1.CommandType_COMMAND_TYPE_SET_SERVER_INCARNATION {
			continue
		}
		_, cmd, err := fsm.Decode(entry.Data)
		set, ok := cmd.(*vbatchv1.SetServerIncarnation)
		if err != nil || !ok {
			return false
		}
		if set.Incarnation == "" {
			delete(recorded, set.NodeId)
		} else {
			recorded[set.NodeId] = set.Incarnation
		}
	}
	return true
}

// envelopeType reads an encoded Envelope's command type without decoding
// (or copying) its payload; 0 if it has none or cannot be read.
func envelopeType(data []byte) vbatchv1.CommandType {
	const typeField = 2 // Envelope.type in state.proto
	for len(data) > 0 {
		num, wtype, n := protowire.ConsumeTag(data)
		if n < 0 {
			return 0
		}
		data = data[n:]
		if num == typeField && wtype == protowire.VarintType {
			v, m := protowire.ConsumeVarint(data)
			if m < 0 {
				return 0
			}
			return vbatchv1.CommandType(v)
		}
		m := protowire.ConsumeFieldValue(num, wtype, data)
		if m < 0 {
			return 0
		}
		data = data[m:]
	}
	return 0
}

// lostStateIn reports why the configuration a peer reported makes this
// node, which has no raft state, a voter that lost its log; "" when it
// does not. Any recorded incarnation will do: a node without raft state
// has a new incarnation, never recorded (the leader records only servers
// that report raft state), so a record for its id is a predecessor's.
func (c *Coordinator) lostStateIn(servers []*vbatchv1.StatusServer) string {
	for _, s := range servers {
		if !s.Voter {
			continue
		}
		if s.Id == c.cfg.NodeID && s.Incarnation != "" && s.Incarnation != c.raftNode.incarnation {
			return "the cluster lists this node as a voter with raft state that this data dir does not hold (was it wiped or replaced?)"
		}
		if s.Id != c.cfg.NodeID && s.Address == c.raftNode.advertise {
			return fmt.Sprintf("voter %s of the cluster has this node's raft address %s", s.Id, s.Address)
		}
	}
	return ""
}

// peerStatuses asks every other coordinator gossip lists for its status
// and returns the answers by node id.
func (c *Coordinator) peerStatuses(ctx context.Context, coords []gossip.Member) map[string]*vbatchv1.StatusResponse {
	out := map[string]*vbatchv1.StatusResponse{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range coords {
		if m.Name == c.cfg.NodeID {
			continue
		}
		wg.Go(func() {
			// Two seconds: a mutual-TLS handshake on a loaded host.
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := c.clusterClient(m.Meta.RPCAddr).Status(cctx, connect.NewRequest(&vbatchv1.StatusRequest{}))
			if err != nil {
				return
			}
			mu.Lock()
			out[m.Name] = resp.Msg
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// admitFresh decides, for a node without raft state, whether to open its
// raft listener to an existing cluster. The leader's answer decides when a
// leader answered: a follower may be behind it (a removed passive
// follower's configuration never moves again). With no leader, every
// coordinator gossip lists must have answered, and every answer counts:
// a peer whose log holds this node's record keeps it out even before its
// FSM applied it. (That is how a node that its peers bootstrapped before
// it started, a voter with nothing recorded, joins the election that needs
// its vote.) An answer whose records do not cover its whole log can only
// admit a node it does not list as a voter. It reports whether the
// listener is open.
func (c *Coordinator) admitFresh(coords []gossip.Member, peers map[string]*vbatchv1.StatusResponse) bool {
	var judges []*vbatchv1.StatusResponse
	for _, st := range peers {
		if st.State == raft.Leader.String() {
			judges = []*vbatchv1.StatusResponse{st}
			break
		}
		judges = append(judges, st)
	}
	wait := func(why string, attrs ...any) bool {
		if time.Since(c.lostLogged) > time.Minute {
			c.lostLogged = time.Now()
			c.log.Info("this coordinator has no raft state; waiting to learn whether the cluster counts it as a voter before it takes part in raft",
				append([]any{"why", why}, attrs...)...)
		}
		return false
	}
	if len(judges) != 1 || judges[0].State != raft.Leader.String() {
		if missing := unanswered(c.cfg.NodeID, coords, peers); len(missing) > 0 {
			return wait("no leader answered, and not every coordinator did", "unanswered", missing)
		}
	}
	for _, st := range judges {
		why := c.lostStateIn(st.Servers)
		if why == "" {
			continue
		}
		if !c.lostState.Swap(true) || time.Since(c.lostLogged) > time.Minute {
			c.lostLogged = time.Now()
			c.log.Error("this coordinator has no raft state but the cluster counts it as a voter; it stays out of raft until the leader removes it from the configuration",
				"why", why, "peer", st.NodeId, "incarnation", c.raftNode.incarnation)
		}
		c.metrics.LostState.Set(1)
		return false
	}
	for _, st := range judges {
		if !st.IncarnationsComplete && c.listedAsVoter(st.Servers) {
			return wait("a peer's answer does not cover its whole log", "peer", st.NodeId)
		}
		// A configuration without this node may be a removal the leader
		// appended and a majority has not taken: until it commits, the
		// node is still a voter to the others. (One that lists it as a
		// voter does not wait: a bootstrap configuration commits only
		// with the votes of nodes such as this one.)
		if len(st.Servers) > 0 && !st.ConfigurationCommitted && !c.listedAsVoter(st.Servers) {
			return wait("a peer's configuration without this node is not committed yet", "peer", st.NodeId)
		}
	}
	c.openRaft()
	return true
}

// listedAsVoter reports whether servers name this node as a voter.
func (c *Coordinator) listedAsVoter(servers []*vbatchv1.StatusServer) bool {
	for _, s := range servers {
		if s.Id == c.cfg.NodeID && s.Voter {
			return true
		}
	}
	return false
}

// openRaft opens the raft listener and clears lost_state.
func (c *Coordinator) openRaft() {
	c.raftNode.inbound.open.Store(true)
	if c.lostState.Swap(false) {
		c.log.Info("this coordinator is no longer a voter of the cluster; joining it afresh")
	}
	c.metrics.LostState.Set(0)
}

// identities holds, on the leader, what each server last said of its raft
// state in Status (autopilot asks every interval).
type identities struct {
	mu sync.Mutex
	by map[string]identity
}

// identity is what a server said of its raft state.
type identity struct {
	incarnation string
	lastIndex   uint64
	lostState   bool
}

func (ids *identities) note(id string, st *vbatchv1.StatusResponse) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if ids.by == nil {
		ids.by = map[string]identity{}
	}
	ids.by[id] = identity{incarnation: st.Incarnation, lastIndex: st.LastIndex, lostState: st.LostState}
}

// reset forgets every server's word: a new term asks them again.
func (ids *identities) reset() {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	ids.by = nil
}

func (ids *identities) get(id string) (identity, bool) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	v, ok := ids.by[id]
	return v, ok
}

// reconcileIncarnations runs on the leader: it removes a voter that
// reports lost_state (whatever the cluster's FSM level: records from a
// time the cluster was at level 11 may gate a node still), records the
// incarnation of every server that holds raft state, and forgets those of
// servers no longer in the configuration.
func (c *Coordinator) reconcileIncarnations(ctx context.Context) {
	r := c.raftNode.raft
	if r.State() != raft.Leader {
		return
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return
	}
	servers := f.Configuration().Servers
	for _, s := range servers {
		if who, ok := c.identities.get(string(s.ID)); ok && who.lostState && s.Suffrage == raft.Voter {
			c.removeLostVoter(ctx, string(s.ID))
		}
	}
	// A voter down must not stop the records (a server promoted
	// meanwhile would have none): one that was seen at the level counts.
	if !c.atFSMLevel(fsm.LevelServerIncarnations, true) {
		return
	}
	var recorded map[string]string
	c.fsm.View(func(s *fsm.State) { recorded = maps.Clone(s.Incarnations) })
	inConfig := map[string]bool{}
	for _, s := range servers {
		id := string(s.ID)
		inConfig[id] = true
		who, ok := c.identities.get(id)
		if id == c.cfg.NodeID {
			who, ok = identity{incarnation: c.raftNode.incarnation, lastIndex: r.LastIndex()}, true
		}
		if !ok || who.lostState || who.incarnation == "" || who.lastIndex == 0 || recorded[id] == who.incarnation {
			continue
		}
		if _, err := c.applyAsLeader(ctx, &vbatchv1.SetServerIncarnation{NodeId: id, Incarnation: who.incarnation}); err != nil {
			c.log.Warn("record coordinator incarnation", "node", id, "err", err)
		}
	}
	for id := range recorded {
		if !inConfig[id] {
			if _, err := c.applyAsLeader(ctx, &vbatchv1.SetServerIncarnation{NodeId: id}); err != nil {
				c.log.Warn("forget coordinator incarnation", "node", id, "err", err)
			}
		}
	}
}

// removeLostVoter takes out of raft a voter that says it lost its raft
// state, once it has said so again just now.
func (c *Coordinator) removeLostVoter(ctx context.Context, id string) {
	addr, ok := c.rpcAddrOf(id)
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	resp, err := c.clusterClient(addr).Status(cctx, connect.NewRequest(&vbatchv1.StatusRequest{}))
	cancel()
	if err != nil || !resp.Msg.LostState || resp.Msg.NodeId != id {
		return
	}
	c.identities.note(id, resp.Msg)
	c.log.Warn("removing coordinator from raft: it restarted without the raft state it had as a voter; it will join again as a new server",
		"node", id, "incarnation", resp.Msg.Incarnation)
	if err := c.raftNode.await(c.raftNode.raft.RemoveServer(raft.ServerID(id), 0, 5*time.Second)); err != nil {
		c.log.Error("remove coordinator that lost its raft state", "node", id, "err", err)
		return
	}
	c.metrics.LostStateRemoved.Inc()
	if _, err := c.commitBarrier("remove lost voter"); err != nil {
		c.log.Warn("commit after configuration change", "err", err)
	}
}
