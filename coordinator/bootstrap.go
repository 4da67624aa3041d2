package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// firstJoin tries the --join addresses once, before the coordinator serves
// anything, so that a coordinator whose node id the pool already lists at
// another address (another coordinator or an agent was given the same id)
// refuses to start rather than run invisible to the pool. Other failures
// (no peer up yet) are left to joinLoop.
func (c *Coordinator) firstJoin() error {
	if len(c.cfg.Join) == 0 {
		return nil
	}
	if _, err := c.pool.Join(c.cfg.Join); errors.Is(err, gossip.ErrNameConflict) {
		return fmt.Errorf("coordinator %s: %w", c.cfg.NodeID, err)
	}
	return nil
}

// joinLoop joins the gossip pool through the --join addresses, then keeps
// this node in it for good: after a network cut longer than memberlist's
// memory of the dead, nothing else would bring the two sides together
// again (rejoin.go).
func (c *Coordinator) joinLoop(ctx context.Context) {
	c.initialJoin(ctx)
	c.rejoinLoop(ctx)
}

// initialJoin keeps trying the --join addresses until one answers, so that
// coordinators may start in any order.
func (c *Coordinator) initialJoin(ctx context.Context) {
	if len(c.cfg.Join) == 0 {
		return
	}
	backoff := 100 * time.Millisecond
	for {
		n, err := c.pool.Join(c.cfg.Join)
		// Joining only ourselves does not count.
		if err == nil && n > 0 && len(c.pool.Members()) > 1 {
			c.log.Info("joined gossip pool", "contacted", n, "members", len(c.pool.Members()))
			return
		}
		if errors.Is(err, gossip.ErrNameConflict) {
			// Start checked this, but the pool was out of reach then: this
			// node is invisible to it until the other node goes.
			c.log.Error("gossip pool lists this node's id at another node; this coordinator cannot join it", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

// bootstrapLoop bootstraps raft once BootstrapExpect coordinators see each
// other, as Consul and Nomad do. A node with raft state, or one that finds a
// peer already in a cluster, never bootstraps: the leader adds it instead.
// A node without raft state opens its raft listener only once it knows
// the cluster does not count it as a voter that lost its log
// (incarnation.go).
func (c *Coordinator) bootstrapLoop(ctx context.Context) {
	if c.raftNode.inbound.open.Load() {
		c.log.Info("raft state found; rejoining existing cluster")
		return
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var waitLogged time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		coords := c.pool.MembersWithRole(gossip.RoleCoordinator)
		peers := c.peerStatuses(ctx, coords)
		if clusterAmong(peers) {
			if c.admitFresh(coords, peers) {
				c.log.Info("found an existing raft cluster; waiting to be added by its leader")
				return
			}
			continue
		}
		// Bootstrap only once every coordinator gossip lists has said it
		// is in no cluster: one that did not answer (its RPC server not up
		// yet after a restart) may hold a configuration naming this node.
		if len(coords) < c.cfg.BootstrapExpect {
			continue
		}
		if missing := unanswered(c.cfg.NodeID, coords, peers); len(missing) > 0 {
			if time.Since(waitLogged) > 30*time.Second {
				waitLogged = time.Now()
				c.log.Info("waiting for every coordinator in gossip to answer before bootstrapping raft", "unanswered", missing)
			}
			continue
		}
		if !c.verifyAnswers(coords, peers) {
			continue
		}
		sort.Slice(coords, func(i, j int) bool { return coords[i].Name < coords[j].Name })
		var servers []raft.Server
		for _, m := range coords {
			if m.Meta.Expect != 0 && m.Meta.Expect != c.cfg.BootstrapExpect {
				c.log.Error("coordinators disagree on bootstrap-expect; not bootstrapping", "peer", m.Name, "peer_expect", m.Meta.Expect, "expect", c.cfg.BootstrapExpect)
				// Every peer answered and none is in a cluster: this node
				// may take part in the one a corrected peer bootstraps.
				c.openRaft()
				return
			}
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr)})
		}
		c.openRaft()
		err := c.raftNode.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			c.log.Error("raft bootstrap failed", "err", err)
			continue
		}
		c.log.Info("raft bootstrapped", "servers", len(servers))
		return
	}
}

// unanswered lists the coordinators of coords, but self, that are not
// among the answers.
func unanswered(self string, coords []gossip.Member, peers map[string]*vbatchv1.StatusResponse) []string {
	var out []string
	for _, m := range coords {
		if _, ok := peers[m.Name]; !ok && m.Name != self {
			out = append(out, m.Name)
		}
	}
	return out
}

// clusterAmong reports whether any of the peers' answers shows a raft
// cluster (a term's leader, log entries or a configuration), which this
// node must then wait to be added to rather than bootstrap a second one.
func clusterAmong(peers map[string]*vbatchv1.StatusResponse) bool {
	for _, st := range peers {
		if st.LastIndex > 0 || st.LeaderId != "" || len(st.Servers) > 0 {
			return true
		}
	}
	return false
}

// reconcileMembers runs on the leader: every live coordinator that gossip
// knows but raft does not is added as a non-voter (a new or replaced node),
// except one remove-peer took out recently (see removedPeers).
func (c *Coordinator) reconcileMembers() {
	r := c.raftNode.raft
	if r.State() != raft.Leader {
		return
	}
	future := r.GetConfiguration()
	if err := future.Error(); err != nil {
		return
	}
	known := map[raft.ServerID]raft.ServerAddress{}
	voter := map[raft.ServerID]bool{}
	for _, s := range future.Configuration().Servers {
		known[s.ID] = s.Address
		voter[s.ID] = s.Suffrage == raft.Voter
	}
	for _, m := range c.pool.MembersWithRole(gossip.RoleCoordinator) {
		addr, ok := known[raft.ServerID(m.Name)]
		if ok && addr == raft.ServerAddress(m.Meta.RaftAddr) {
			continue
		}
		if !ok && c.removed.held(m.Name, c.Now()) {
			continue
		}
		if lvl := max(m.Meta.FSM, 1); !ok && lvl < fsm.Level {
			// It would meet raft commands it cannot apply (and stop on
			// them) when it replays the log.
			if _, seen := c.olderBuilds.LoadOrStore(m.Name, true); !seen {
				c.log.Warn("not adding coordinator: its build applies older raft commands than this cluster's; upgrade it",
					"node", m.Name, "its_fsm_level", lvl, "cluster_fsm_level", fsm.Level)
			}
			continue
		}
		if !c.verifyPeers(context.Background(), []gossip.Member{m}) {
			continue
		}
		// A new server joins as a non-voter: it does not count toward
		// quorum until autopilot has seen it healthy for the stabilization
		// time and promotes it. A known server whose address changed keeps
		// its suffrage.
		add, kind := r.AddNonvoter, "non-voter"
		if ok && voter[raft.ServerID(m.Name)] {
			add, kind = r.AddVoter, "voter"
		}
		c.log.Info("adding coordinator to raft", "node", m.Name, "raft_addr", m.Meta.RaftAddr, "as", kind)
		if err := c.raftNode.await(add(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 5*time.Second)); err != nil {
			c.log.Warn("add server failed", "node", m.Name, "err", err)
			continue
		}
		c.olderBuilds.Delete(m.Name) // warn again if it is ever downgraded
		if _, err := c.commitBarrier("add voter"); err != nil {
			c.log.Warn("commit after configuration change", "err", err)
		}
	}
}

// verifyPeers checks, when TLS is on, that each coordinator gossip
// announces really is one before raft trusts it with a vote: its RPC
// server must present a server certificate of this cluster (the client
// transport checks the role) and report the node id and raft address that
// gossip claimed. Gossip alone never makes a node a voter.
func (c *Coordinator) verifyPeers(ctx context.Context, coords []gossip.Member) bool {
	if c.tls == nil {
		return true
	}
	for _, m := range coords {
		if m.Name == c.cfg.NodeID {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := c.clusterClient(m.Meta.RPCAddr).Status(cctx, connect.NewRequest(&vbatchv1.StatusRequest{}))
		cancel()
		if err != nil {
			c.log.Warn("coordinator announced by gossip failed verification", "node", m.Name, "rpc_addr", m.Meta.RPCAddr, "err", err)
			return false
		}
		if !c.sameIdentity(m, resp.Msg) {
			return false
		}
	}
	return true
}

// verifyAnswers is verifyPeers on answers already in hand, one from every
// coordinator of coords but this one (peerStatuses calls over the same
// mutual-TLS client).
func (c *Coordinator) verifyAnswers(coords []gossip.Member, peers map[string]*vbatchv1.StatusResponse) bool {
	if c.tls == nil {
		return true
	}
	for _, m := range coords {
		if st, ok := peers[m.Name]; ok && !c.sameIdentity(m, st) {
			return false
		}
	}
	return true
}

// sameIdentity reports whether a coordinator's Status answer names the
// node id and raft address gossip announced for it.
func (c *Coordinator) sameIdentity(m gossip.Member, st *vbatchv1.StatusResponse) bool {
	if st.NodeId == m.Name && st.RaftAddr == m.Meta.RaftAddr {
		return true
	}
	c.log.Warn("coordinator announced by gossip reports another identity", "node", m.Name, "reported_node", st.NodeId,
		"raft_addr", m.Meta.RaftAddr, "reported_raft_addr", st.RaftAddr)
	return false
}
