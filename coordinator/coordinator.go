// Package coordinator runs a vbatch coordinator: raft and its FSM, gossip
// membership and bootstrap, write forwarding, the blob store, the leader
// loop, the OpenAI HTTP API and the connect RPC services.
package coordinator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/coordinator/blob"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/monitoring"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// Coordinator is one running coordinator.
type Coordinator struct {
	cfg Config
	log *slog.Logger

	// seenLevels holds the FSM level each raft server last advertised in
	// gossip that this node saw (atFSMLevel).
	seenLevels sync.Map
	// olderBuilds holds the names of coordinators not added to raft
	// because they advertise an older FSM level (each logged once).
	olderBuilds sync.Map

	// readyTerm is the last term in which this node, as leader, committed
	// a barrier: from then on its commit index covers every acknowledged
	// write, and consistent reads may use it (Raft §8).
	readyTerm atomic.Uint64
	// clock holds back this leader's commands until the leases of its
	// term, or of its stepped clock, are extended (leaderclock.go).
	clock *leaderClock
	// clockStep moves Now by that many nanoseconds: tests step the wall
	// clock of a running coordinator with it.
	clockStep atomic.Int64

	fsm      *fsm.FSM
	raftNode *raftNode
	// logWrites times this node's raft log writes; peerDisks holds what
	// the other servers last reported of theirs (see slowleader.go).
	logWrites  *latencies
	peerDiskMu sync.Mutex
	peerDisks  map[string]peerDisk
	pool       *gossip.Pool
	agents     *agentService
	notices    *commitNotices
	router     *router
	blobs      *blob.Store
	repl       *blob.Replicator
	scrub      *blob.Scrubber
	// skews holds, on the leader, each peer's clock offset from its own.
	skews clockSkews
	// blobHealth is what the last repair pass found (blobhealth.go).
	blobHealth blobHealth

	registry *prometheus.Registry
	metrics  *monitoring.CoordinatorMetrics

	// tls is nil unless TLS is configured.
	tls        *tlsutil.Store
	httpClient *http.Client
	// agentTransport reaches agents' online-inference endpoints.
	agentTransport http.RoundTripper
	clientsMu      sync.Mutex
	clusterClients map[string]vbatchv1connect.ClusterServiceClient

	httpAdvertise string
	rpcAdvertise  string
	httpLn, rpcLn net.Listener
	httpSrv       *http.Server
	rpcSrv        *http.Server

	// autopilot is raft-autopilot's integration; it runs on the leader.
	autopilot *autopilotDelegate
	// apCache is a follower's copy of the leader's autopilot state.
	apCache autopilotCache
	// audit receives the audit records; auditFile is its file, if any.
	audit     *slog.Logger
	auditFile *monitoring.RotatingWriter

	// removed holds the servers remove-peer took out of raft.
	removed removedPeers
	// lostState is set while this node, started without raft state, is
	// a voter of the cluster under another incarnation (incarnation.go);
	// lostLogged is when the bootstrap loop last said so.
	lostState  atomic.Bool
	lostLogged time.Time
	// identities holds, on the leader, each server's last word on its
	// raft state.
	identities identities

	// agentGone receives the ids of agents gossip declared dead; it wakes
	// the leader loop so their leases are expired at once.
	agentGone chan string
	// life ends when the coordinator starts shutting down; stop ends it
	// and with it the background loops.
	life context.Context
	stop context.CancelFunc
	// loops are the background loops (goLoop), wg the API and RPC
	// servers: Close waits for the loops while raft still runs, so every
	// raft future they wait on is answered.
	loops     sync.WaitGroup
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Run starts a coordinator and blocks until ctx ends, then shuts it down.
func Run(ctx context.Context, cfg Config, logger *slog.Logger, logOut io.Writer) error {
	c, err := Start(cfg, logger, logOut)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return c.Close()
}

// Start opens the stores, starts every listener and background loop, and
// returns the running coordinator.
func Start(cfg Config, logger *slog.Logger, logOut io.Writer) (c *Coordinator, err error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if logOut == nil {
		logOut = os.Stderr
	}
	c = &Coordinator{
		cfg:            cfg,
		log:            logger.With("logger", "coordinator", "node_id", cfg.NodeID),
		fsm:            fsm.New(),
		registry:       prometheus.NewRegistry(),
		clusterClients: map[string]vbatchv1connect.ClusterServiceClient{},
		agentGone:      make(chan string, 64),
		clock:          newLeaderClock(),
	}
	if err := c.setupTLS(); err != nil {
		return nil, err
	}
	c.httpClient = newHTTPClient(c.tls)
	c.agentTransport = newAgentTransport(c.tls)
	c.metrics = monitoring.NewCoordinatorMetrics(c.registry)
	c.agents = &agentService{c: c, telemetry: map[string]*AgentTelemetry{}}
	c.router = newRouter(c)
	c.autopilot = &autopilotDelegate{c: c}
	if err := c.openAudit(logOut); err != nil {
		return nil, err
	}
	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				_ = closers[i]()
			}
		}
	}()
	if c.blobs, err = blob.Open(filepath.Join(cfg.DataDir, "blobs")); err != nil {
		return nil, fmt.Errorf("open blob store: %w", err)
	}
	if c.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("listen http %s: %w", cfg.HTTPAddr, err)
	}
	closers = append(closers, c.httpLn.Close)
	if c.rpcLn, err = net.Listen("tcp", cfg.RPCAddr); err != nil {
		return nil, fmt.Errorf("listen rpc %s: %w", cfg.RPCAddr, err)
	}
	closers = append(closers, c.rpcLn.Close)
	if c.httpAdvertise, err = netutil.Advertise(c.httpLn.Addr().String()); err != nil {
		return nil, err
	}
	if c.rpcAdvertise, err = netutil.Advertise(c.rpcLn.Addr().String()); err != nil {
		return nil, err
	}
	c.logWrites = &latencies{}
	if c.raftNode, err = openRaft(&c.cfg, c.fsm, c.tls, c.log, c.logWrites); err != nil {
		return nil, err
	}
	closers = append(closers, c.raftNode.close)
	keys, err := gossip.KeysFromFlags(cfg.GossipKey, cfg.GossipKeyFile)
	if err != nil {
		return nil, err
	}
	c.pool, err = gossip.Start(gossip.Config{
		Name:        cfg.NodeID,
		BindAddr:    cfg.GossipAddr,
		Keys:        keys,
		KeyringFile: gossip.KeyringPath(cfg.DataDir),
		Label:       c.cfg.ClusterName,
		Meta: gossip.Meta{
			Role:     gossip.RoleCoordinator,
			RPCAddr:  c.rpcAdvertise,
			HTTPAddr: c.httpAdvertise,
			RaftAddr: c.raftNode.advertise,
			Expect:   cfg.BootstrapExpect,
			FSM:      fsm.Level,
		},
		ProbeInterval: cfg.Timing.GossipProbeInterval,
		WrapTransport: cfg.gossipTransport,
		OnEvent:       c.onMemberEvent,
		Logger:        logger,
	})
	if err != nil {
		return nil, err
	}
	pool := c.pool // c is nil once Start returns an error
	closers = append(closers, func() error { return pool.Leave(time.Second) })
	if err = c.firstJoin(); err != nil {
		return nil, err
	}
	c.repl = &blob.Replicator{
		Store:  c.blobs,
		Self:   cfg.NodeID,
		Peers:  c.blobPeers,
		Client: c.httpClient,
		Scheme: c.scheme(),
		Logger: c.log.With("logger", "blob"),
	}
	c.scrub = &blob.Scrubber{
		Store:    c.blobs,
		Rate:     cfg.BlobScrubRate,
		Interval: cfg.BlobScrubInterval,
		Log:      c.log.With("logger", "blob"),
	}
	c.notices = newCommitNotices(c.raftNode.raft, c.metrics.CommitNotices)
	c.life, c.stop = context.WithCancel(context.Background())
	c.startServers()
	c.startLoops()
	c.log.Info("coordinator started",
		"http_addr", c.httpAdvertise, "rpc_addr", c.rpcAdvertise,
		"raft_addr", c.raftNode.advertise, "gossip_addr", c.pool.Addr(),
		"bootstrap_expect", cfg.BootstrapExpect, "tls", c.tls != nil, "gossip_encrypted", c.pool.EncryptionEnabled())
	if c.tls == nil && !(netutil.IsLoopback(cfg.RPCAddr) && netutil.IsLoopback(cfg.RaftAddr)) {
		c.log.Warn("RPC and raft are unauthenticated plain text: anyone who reaches them controls the cluster; " +
			"set --tls-cert, --tls-key and --tls-ca (docs/security.md)")
	}
	if !c.pool.EncryptionEnabled() && !netutil.IsLoopback(cfg.GossipAddr) {
		c.log.Warn("gossip is not encrypted: set --gossip-key-file (docs/security.md)")
	}
	return c, nil
}

// Close hands leadership to another voter if this node leads, stops the
// servers, leaves gossip and shuts raft down. Calls after the first return
// the first call's result.
func (c *Coordinator) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Coordinator) close() error {
	c.handOffLeadership()
	c.stopLoops()
	loopsDone := c.waitLoops()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.httpSrv.Shutdown(ctx)
	_ = c.rpcSrv.Shutdown(ctx)
	_ = c.pool.Leave(time.Second)
	err := c.raftNode.close()
	c.wg.Wait()
	if !loopsDone && !c.waitLoops() {
		c.log.Error("background loops did not stop; closing without them")
	}
	if c.auditFile != nil {
		_ = c.auditFile.Close()
	}
	c.log.Info("coordinator stopped")
	return err
}

// loopsStopTimeout bounds how long Close waits for the background loops
// before it stops raft regardless (which answers whatever they wait on).
const loopsStopTimeout = 15 * time.Second

// waitLoops waits up to loopsStopTimeout for the background loops to
// return and reports whether they did. Close calls it while raft still
// runs, so a loop waiting on a raft future is answered (applied, or
// leadership lost) rather than left waiting on a raft that shut down.
func (c *Coordinator) waitLoops() bool {
	done := make(chan struct{})
	go func() {
		c.loops.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(loopsStopTimeout):
		c.log.Warn("background loops still running", "waited", loopsStopTimeout.String())
		return false
	}
}

// FSM is the local replicated state.
func (c *Coordinator) FSM() *fsm.FSM { return c.fsm }

// Now is the coordinator's clock.
func (c *Coordinator) Now() time.Time {
	return time.Now().Add(c.cfg.clockOffset + time.Duration(c.clockStep.Load()))
}

// HTTPAddr is the address the API listens on.
func (c *Coordinator) HTTPAddr() string { return c.httpLn.Addr().String() }

// IsLeader reports whether this node is the raft leader.
func (c *Coordinator) IsLeader() bool { return c.raftNode.raft.State() == raft.Leader }

// rpcAddrOf maps a coordinator's node id to its RPC address via gossip.
func (c *Coordinator) rpcAddrOf(id string) (string, bool) {
	if id == c.cfg.NodeID {
		return c.rpcAdvertise, true
	}
	m, ok := c.coordinatorMember(id)
	if !ok || m.Meta.RPCAddr == "" {
		return "", false
	}
	return m.Meta.RPCAddr, true
}

// blobPeers lists the other raft voters with their RPC addresses.
func (c *Coordinator) blobPeers() []blob.Peer {
	var peers []blob.Peer
	for _, s := range c.voters() {
		if string(s.ID) == c.cfg.NodeID {
			continue
		}
		if addr, ok := c.rpcAddrOf(string(s.ID)); ok {
			peers = append(peers, blob.Peer{ID: string(s.ID), Addr: addr})
		}
	}
	return peers
}

// AtFSMLevel reports whether every server of the raft configuration
// advertises at least the given FSM level (api.Backend).
func (c *Coordinator) AtFSMLevel(level int) bool { return c.clusterAtFSMLevel(level) }

// clusterAtFSMLevel reports whether every server of the raft configuration
// (non-voters too: they apply every entry) advertises in gossip an FSM
// level of at least level, so a command of that level may be proposed. A
// server that gossip does not list counts as older: it may come back with
// an older build.
func (c *Coordinator) clusterAtFSMLevel(level int) bool { return c.atFSMLevel(level, false) }

// atFSMLevel is clusterAtFSMLevel; with remembered, a server gossip does
// not list counts at the level this node last saw it advertise (none:
// older), for a command worth proposing while a server is down.
func (c *Coordinator) atFSMLevel(level int, remembered bool) bool {
	f := c.raftNode.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == c.cfg.NodeID {
			if fsm.Level < level {
				return false
			}
			continue
		}
		have := 0
		if m, ok := c.coordinatorMember(string(s.ID)); ok {
			have = max(m.Meta.FSM, 1)
			c.seenLevels.Store(string(s.ID), have)
		} else if v, ok := c.seenLevels.Load(string(s.ID)); ok && remembered {
			have = v.(int)
		}
		if have < level {
			return false
		}
	}
	return true
}

// voters returns the voting servers of the current raft configuration.
func (c *Coordinator) voters() []raft.Server {
	f := c.raftNode.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, s)
		}
	}
	return out
}

func (c *Coordinator) onMemberEvent(e gossip.Event) {
	c.log.Debug("gossip event", "kind", e.Kind, "member", e.Member.Name, "role", e.Member.Meta.Role)
	if e.Member.Meta.Role == gossip.RoleCoordinator && e.Kind == "join" {
		// A removed coordinator that rejoins the pool was restarted by
		// its operator: let the leader add it again.
		c.removed.forget(e.Member.Name)
	}
	if e.Member.Meta.Role == gossip.RoleAgent && e.Kind == "leave" {
		c.router.agentGone(e.Member.Name)
		select {
		case c.agentGone <- e.Member.Name:
		default:
		}
	}
}

var _ api.Backend = (*Coordinator)(nil)

// keyFreshnessBeats is how many raft heartbeat timeouts, and keyFreshnessMin
// the least time, a follower may go without hearing from the leader before
// its copy of the API keys is no longer trusted: heartbeats arrive many
// times a second, so such a node is cut off (not merely in an election).
const (
	keyFreshnessBeats = 10
	keyFreshnessMin   = 10 * time.Second
)

// keyFreshness is how long StateFresh trusts this node's state without
// word from the leader.
func (c *Coordinator) keyFreshness() time.Duration {
	return max(keyFreshnessBeats*c.cfg.Timing.HeartbeatTimeout, keyFreshnessMin)
}

// StateFresh implements api.Backend: nil while this node leads, or heard
// from the leader within keyFreshness.
func (c *Coordinator) StateFresh() error {
	keyFreshness := c.keyFreshness()
	r := c.raftNode.raft
	if r.State() == raft.Leader {
		return nil
	}
	last := r.LastContact()
	if last.IsZero() {
		return fmt.Errorf("no contact with a raft leader since this coordinator started: %w", api.ErrUnavailable)
	}
	if d := time.Since(last); d > keyFreshness {
		return fmt.Errorf("no contact with the raft leader for %s: %w", d.Round(time.Second), api.ErrUnavailable)
	}
	return nil
}
