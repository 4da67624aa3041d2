package coordinator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestWipedVoterRejoinsAsNewServer: a voter restarted with an empty data
// dir under its old node id and raft address takes no part in raft (no
// vote, no entries) while the cluster still counts it as a voter; the
// leader removes it, and it joins again as a new server and catches up.
func TestWipedVoterRejoinsAsNewServer(t *testing.T) {
	leader, victim, _ := recordedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	putKey(t, ctx, leader, "before-wipe")

	old := victim.raftNode.incarnation
	if recorded(leader)[victim.cfg.NodeID] != old {
		t.Fatalf("recorded incarnation of %s = %q, want %q", victim.cfg.NodeID, recorded(leader)[victim.cfg.NodeID], old)
	}
	cfg := victim.cfg
	wiped := wipeAndStart(t, victim, leader.pool.Addr())
	putKey(t, ctx, leader, "while-gone")
	if wiped.raftNode.incarnation == old {
		t.Fatal("a wiped data dir kept its incarnation")
	}

	// It says it lost its state, and while it does its raft took nothing.
	waitFor(t, 20*time.Second, "the wiped node to report lost state", func() bool { return wiped.lostState.Load() })
	if n := wiped.raftNode.raft.LastIndex(); n != 0 {
		t.Fatalf("the wiped node's raft took entries (last index %d) while the cluster counted it as a voter", n)
	}
	if got := testutil.ToFloat64(wiped.metrics.LostState); got != 1 {
		t.Fatalf("vbatch_raft_lost_state = %v, want 1", got)
	}

	// The leader removes it; it joins again, is promoted and catches up.
	waitFor(t, 20*time.Second, "the leader to remove the wiped voter", func() bool {
		return testutil.ToFloat64(leader.metrics.LostStateRemoved) == 1
	})
	waitFor(t, 30*time.Second, "the wiped node back as a voter", func() bool {
		return serverIDs(t, leader)[cfg.NodeID] == raft.Voter && !wiped.lostState.Load()
	})
	waitFor(t, 10*time.Second, "the wiped node to catch up", func() bool { return hasKey(wiped, "before-wipe") && hasKey(wiped, "while-gone") })
	waitFor(t, 10*time.Second, "its new incarnation recorded", func() bool {
		return recorded(leader)[cfg.NodeID] == wiped.raftNode.incarnation
	})
	if got := testutil.ToFloat64(wiped.metrics.LostState); got != 0 {
		t.Fatalf("vbatch_raft_lost_state = %v after rejoining, want 0", got)
	}

	// A restart with its data dir keeps its incarnation and never waits.
	again := restartNode(t, wiped)
	if again.raftNode.incarnation != wiped.raftNode.incarnation || !again.raftNode.inbound.open.Load() {
		t.Fatalf("restart with state: incarnation %q (was %q), listener open %v",
			again.raftNode.incarnation, wiped.raftNode.incarnation, again.raftNode.inbound.open.Load())
	}
	putKey(t, ctx, leader, "after-restart")
	waitFor(t, 10*time.Second, "the restarted node to catch up", func() bool { return hasKey(again, "after-restart") })
}

// recorded is the incarnations c's FSM records.
func recorded(c *Coordinator) map[string]string {
	var out map[string]string
	c.fsm.View(func(s *fsm.State) { out = maps.Clone(s.Incarnations) })
	return out
}

// recordedCluster starts three coordinators and waits until every one
// records all three incarnations; it returns the leader and the followers.
func recordedCluster(t *testing.T) (leader, f1, f2 *Coordinator) {
	t.Helper()
	nodes := startCluster(t, 3)
	leader = waitLeader(t, nodes)
	waitFor(t, 10*time.Second, "every incarnation recorded on every node", func() bool {
		for _, c := range nodes {
			if len(recorded(c)) != 3 {
				return false
			}
		}
		return true
	})
	rest := others(nodes, leader)
	return leader, rest[0], rest[1]
}

// wipeAndStart closes c, deletes its data dir and starts it again under
// its id and raft address, joining through join.
func wipeAndStart(t *testing.T, c *Coordinator, join string) *Coordinator {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Logf("close %s: %v", c.cfg.NodeID, err)
	}
	cfg := c.cfg
	cfg.RaftAddr = c.raftNode.advertise
	cfg.Join = []string{join}
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	return startNode(t, cfg)
}

// stayShut fails if w opens its raft listener or takes a raft entry
// within d.
func stayShut(t *testing.T, w *Coordinator, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if w.raftNode.inbound.open.Load() || w.raftNode.raft.LastIndex() != 0 {
			t.Fatalf("the wiped node opened its raft listener (last index %d)", w.raftNode.raft.LastIndex())
		}
	}
}

// TestWipedVoterWaitsForPeerBehind: the only peer up is a follower that
// restarted and has applied nothing yet; its log, not its FSM, holds the
// wiped voter's record. The wiped node must stay out (its vote would let
// that follower lead without a write the old leader and the wiped node
// committed) until the old leader is back; then it rejoins and catches up.
func TestWipedVoterWaitsForPeerBehind(t *testing.T) {
	leader, behind, victim := recordedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	behindCfg := behind.cfg
	behindCfg.RaftAddr, behindCfg.Join = behind.raftNode.advertise, nil
	if err := behind.Close(); err != nil {
		t.Logf("close %s: %v", behind.cfg.NodeID, err)
	}
	putKey(t, ctx, leader, "k") // on the leader and the victim only
	if err := leader.Close(); err != nil {
		t.Logf("close %s: %v", leader.cfg.NodeID, err)
	}
	again := startNode(t, behindCfg)
	wiped := wipeAndStart(t, victim, again.pool.Addr())
	waitFor(t, 20*time.Second, "the wiped node to report lost state", func() bool { return wiped.lostState.Load() })
	stayShut(t, wiped, 3*time.Second)
	if again.IsLeader() {
		t.Fatal("the follower that is behind leads")
	}

	// Restarted with --join, as its unit would.
	backCfg := leader.cfg
	backCfg.RaftAddr, backCfg.Join = leader.raftNode.advertise, []string{again.pool.Addr()}
	back := startNode(t, backCfg)
	waitFor(t, 30*time.Second, "the wiped node back as a voter", func() bool {
		l := waitLeader(t, []*Coordinator{again, back})
		return serverIDs(t, l)[victim.cfg.NodeID] == raft.Voter && !wiped.lostState.Load()
	})
	waitFor(t, 10*time.Second, "every node to hold k", func() bool { return hasKey(again, "k") && hasKey(wiped, "k") })
}

// TestWipedVoterDoesNotBootstrapUnheard: a wiped node whose peers are in
// gossip but do not answer (their RPC servers not up yet) must not
// bootstrap a cluster or open its raft listener.
func TestWipedVoterDoesNotBootstrapUnheard(t *testing.T) {
	leader, victim, other := recordedCluster(t)
	leader.rpcLn.Close()
	other.rpcLn.Close()
	wiped := wipeAndStart(t, victim, leader.pool.Addr())
	waitFor(t, 10*time.Second, "the wiped node to see its peers in gossip", func() bool {
		return len(wiped.pool.MembersWithRole("coordinator")) == 3
	})
	stayShut(t, wiped, 3*time.Second)
}

func TestPartialWipeIsRefused(t *testing.T) {
	nodes := startCluster(t, 1, func(c *Config) { c.RaftSnapshotThreshold = 1; c.RaftTrailingLogs = 1 })
	c := nodes[0]
	if err := c.raftNode.await(c.raftNode.raft.Snapshot()); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	db := filepath.Join(c.cfg.DataDir, "raft", "raft.db")
	if err := os.Remove(db); err != nil {
		t.Fatal(err)
	}
	cfg := c.cfg
	cfg.RaftAddr = c.raftNode.advertise
	for range 2 { // and it does not create raft.db on the way
		if _, err := Start(cfg, slog.New(slog.DiscardHandler), io.Discard); err == nil || !strings.Contains(err.Error(), "no raft.db") {
			t.Fatalf("start with snapshots but no raft.db = %v, want refused", err)
		}
	}
}

func TestLostStateIn(t *testing.T) {
	c := &Coordinator{cfg: Config{NodeID: "c2"}, raftNode: &raftNode{incarnation: "new", advertise: "10.0.0.2:8002"}}
	cases := []struct {
		name    string
		servers []*vbatchv1.StatusServer
		lost    bool
	}{
		{"no configuration", nil, false},
		{"not listed", []*vbatchv1.StatusServer{{Id: "c1", Address: "10.0.0.1:8002", Voter: true, Incarnation: "a"}}, false},
		{"voter, nothing recorded (bootstrapped by its peers)", []*vbatchv1.StatusServer{{Id: "c2", Address: "10.0.0.2:8002", Voter: true}}, false},
		{"voter, this incarnation", []*vbatchv1.StatusServer{{Id: "c2", Address: "10.0.0.2:8002", Voter: true, Incarnation: "new"}}, false},
		{"voter, another incarnation", []*vbatchv1.StatusServer{{Id: "c2", Address: "10.0.0.2:8002", Voter: true, Incarnation: "old"}}, true},
		{"non-voter, another incarnation", []*vbatchv1.StatusServer{{Id: "c2", Address: "10.0.0.2:8002", Incarnation: "old"}}, false},
		{"another voter at this raft address", []*vbatchv1.StatusServer{{Id: "c9", Address: "10.0.0.2:8002", Voter: true, Incarnation: "x"}}, true},
		{"another non-voter at this raft address", []*vbatchv1.StatusServer{{Id: "c9", Address: "10.0.0.2:8002"}}, false},
	}
	for _, tc := range cases {
		if why := c.lostStateIn(tc.servers); (why != "") != tc.lost {
			t.Errorf("%s: lostStateIn = %q, want lost %v", tc.name, why, tc.lost)
		}
	}
}

func TestLoadIncarnation(t *testing.T) {
	dir := t.TempDir()
	first, err := loadIncarnation(dir, true)
	if err != nil || len(first) != 32 {
		t.Fatalf("fresh incarnation %q, %v", first, err)
	}
	kept, err := loadIncarnation(dir, false)
	if err != nil || kept != first {
		t.Fatalf("incarnation with state = %q, %v; want %q", kept, err, first)
	}
	// No raft state: a new one, whatever file a partial wipe left.
	again, err := loadIncarnation(dir, true)
	if err != nil || again == first {
		t.Fatalf("incarnation without state = %q, %v; want a new one", again, err)
	}
	// State from a build before incarnations: it gets one, kept from then on.
	if err := os.Remove(filepath.Join(dir, incarnationFile)); err != nil {
		t.Fatal(err)
	}
	upgraded, err := loadIncarnation(dir, false)
	if err != nil || upgraded == "" || upgraded == again {
		t.Fatalf("incarnation for old state = %q, %v", upgraded, err)
	}
	if kept, _ := loadIncarnation(dir, false); kept != upgraded {
		t.Fatalf("incarnation after upgrade = %q, want %q", kept, upgraded)
	}
}

// TestWipedVoterWaitsForRemovalToCommit: the leader has appended the
// wiped voter's removal but cannot commit it (the third voter, which lacks
// a write the leader and the old voter committed, is down). The wiped node
// must stay out: admitted, its vote could elect that third voter once the
// leader goes. Found by review: admission trusted the latest, uncommitted
// configuration.
func TestWipedVoterWaitsForRemovalToCommit(t *testing.T) {
	l, b, v := recordedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.Close(); err != nil {
		t.Logf("close %s: %v", b.cfg.NodeID, err)
	}
	putKey(t, ctx, l, "k") // committed by l and v only
	// What removeLostVoter does; without b it cannot commit.
	l.raftNode.raft.RemoveServer(raft.ServerID(v.cfg.NodeID), 0, time.Second)
	waitFor(t, 2*time.Second, "the removal appended", func() bool { _, in := serverIDs(t, l)[v.cfg.NodeID]; return !in })
	wiped := wipeAndStart(t, v, l.pool.Addr())
	stayShut(t, wiped, 4*time.Second)
}

// logHook runs fn after GetLog of index at: a compaction or truncation
// landing between two reads of a Status scan.
type logHook struct {
	raft.LogStore
	at uint64
	fn func()
}

func (g *logHook) GetLog(i uint64, l *raft.Log) error {
	err := g.LogStore.GetLog(i, l)
	if i == g.at {
		g.fn()
	}
	return err
}

// TestIncarnationScanLeavesRaftEntries: an entry the scan reads from the
// log cache shares its bytes with raft's copy (still to be applied); the
// next entry, read from disk once the cache was emptied, must not be
// decoded into them. Found by review: the scan reused one raft.Log.
func TestIncarnationScanLeavesRaftEntries(t *testing.T) {
	store, err := raftboltdb.NewBoltStore(filepath.Join(t.TempDir(), "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cache, err := raft.NewLogCache(512, store)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i, rec := range [][2]string{{"c1", "aaaa"}, {"c2", "bbbb"}, {"c3", "cccc"}} {
		data, err := fsm.Encode(&vbatchv1.SetServerIncarnation{NodeId: rec[0], Incarnation: rec[1]}, time.Unix(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: data})
	}
	if err := cache.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	want := string(logs[1].Data)
	c := &Coordinator{raftNode: &raftNode{logs: &logHook{LogStore: cache, at: 2, fn: func() { _ = cache.DeleteRange(1, 1) }}}}
	got := map[string]string{}
	if !c.pendingIncarnations(1, 3, got, new(uint64)) {
		t.Fatal("scan incomplete")
	}
	if string(logs[1].Data) != want {
		t.Fatal("the scan rewrote raft's in-memory entry 2")
	}
	if len(got) != 2 || got["c2"] != "bbbb" || got["c3"] != "cccc" {
		t.Fatalf("records = %v", got)
	}
}

// TestStatusRecordsWhileFSMLags: raft counts an entry applied when it hands
// it to the FSM, before the FSM applies it; a Status answer that says it
// covers the whole log must show a record the log holds even then. Found
// by review: the scan started after raft's applied index.
func TestStatusRecordsWhileFSMLags(t *testing.T) {
	c := startCluster(t, 1, func(c *Config) { c.fsmApplyDelay = 50 * time.Millisecond })[0]
	self := c.cfg.NodeID
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		st := c.localStatus()
		for _, s := range st.Servers {
			if s.Id == self && s.Incarnation != "" {
				return
			}
		}
		if !st.IncarnationsComplete {
			continue
		}
		for i := uint64(1); i <= st.LastIndex; i++ {
			var e raft.Log
			if c.raftNode.logs.GetLog(i, &e) != nil || e.Type != raft.LogCommand {
				continue
			}
			if _, cmd, err := fsm.Decode(e.Data); err == nil {
				if set, ok := cmd.(*vbatchv1.SetServerIncarnation); ok && set.NodeId == self {
					t.Fatalf("Status (complete, last index %d) shows no record for %s, but log entry %d holds it", st.LastIndex, self, i)
				}
			}
		}
	}
	t.Fatal("no record within 30 s")
}

// TestRecordsWhileAVoterIsDown: with a voter down (out of gossip), a
// server that joins and is promoted meanwhile still gets its record, so
// wiped it is kept out. Found by review: nothing was recorded while any
// server was missing from gossip.
func TestRecordsWhileAVoterIsDown(t *testing.T) {
	leader, down, _ := recordedCluster(t)
	if err := down.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	n := startNode(t, nodeConfig(t, "c9", 3, []string{leader.pool.Addr()}))
	waitFor(t, 20*time.Second, "c9 a voter with its incarnation recorded", func() bool {
		return serverIDs(t, leader)["c9"] == raft.Voter && recorded(leader)["c9"] == n.raftNode.incarnation
	})
	w := wipeAndStart(t, n, leader.pool.Addr())
	waitFor(t, 20*time.Second, "wiped c9 to report lost state", func() bool { return w.lostState.Load() })
}

// TestStaggeredBootstrap: fresh nodes started seconds apart, each joining
// through the one started before, form one cluster of three voters with
// every raft listener open.
func TestStaggeredBootstrap(t *testing.T) {
	var nodes []*Coordinator
	var join []string
	for i, gap := range []time.Duration{0, 1500 * time.Millisecond, 3 * time.Second} {
		time.Sleep(gap) // the gaps are what is tested
		c := startNode(t, nodeConfig(t, fmt.Sprintf("c%d", 3-i), 3, join))
		join = []string{c.pool.Addr()}
		nodes = append(nodes, c)
	}
	waitLeader(t, nodes)
	waitVoters(t, nodes, 3)
	for _, c := range nodes {
		if !c.raftNode.inbound.open.Load() {
			t.Fatalf("%s's raft listener is shut", c.cfg.NodeID)
		}
	}
}
