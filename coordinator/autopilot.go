package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/version"
	"github.com/vbatch/vbatch/monitoring"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Autopilot (github.com/hashicorp/raft-autopilot) runs on the leader, as
// in Consul and Nomad: it tracks every server's health, promotes a new
// coordinator from non-voter to voter once it has been healthy for the
// stabilization time, and removes a coordinator that gossip has not seen
// for DeadServerGrace, so a dead host does not count against quorum for
// ever. Its state backs `vbctl cluster status` and the autopilot metrics.

// autopilotDelegate is autopilot's ApplicationIntegration.
type autopilotDelegate struct {
	c *Coordinator

	mu sync.Mutex
	// missingSince is when each raft server was first seen absent from
	// gossip; it becomes "failed" DeadServerGrace later.
	missingSince map[raft.ServerID]time.Time
	state        *autopilot.State
}

// startAutopilot runs autopilot for one term of leadership.
func (c *Coordinator) startAutopilot(ctx context.Context) {
	// autopilot names its logger itself (Named("autopilot")), which makes
	// the lines logger=autopilot.
	logger := monitoring.HCLog(c.log, "")
	ap := autopilot.New(&barrierRaft{Raft: c.raftNode.raft, c: c}, c.autopilot,
		autopilot.WithLogger(logger),
		autopilot.WithUpdateInterval(c.cfg.Timing.AutopilotInterval),
		autopilot.WithReconcileInterval(c.cfg.Timing.AutopilotInterval),
	)
	// A new term starts its grace periods afresh.
	c.autopilot.mu.Lock()
	c.autopilot.missingSince = map[raft.ServerID]time.Time{}
	c.autopilot.mu.Unlock()
	c.identities.reset()
	ap.Start(ctx)
	go func() {
		<-ctx.Done()
		<-ap.Stop()
		c.autopilot.mu.Lock()
		c.autopilot.state = nil
		c.autopilot.mu.Unlock()
	}()
}

// AutopilotConfig is the configuration autopilot runs with.
func (d *autopilotDelegate) AutopilotConfig() *autopilot.Config {
	cfg := d.c.cfg
	return &autopilot.Config{
		CleanupDeadServers:      cfg.DeadServerGrace > 0,
		LastContactThreshold:    cfg.Timing.AutopilotLastContact,
		MaxTrailingLogs:         250,
		MinQuorum:               uint(cfg.MinQuorum),
		ServerStabilizationTime: cfg.ServerStabilizationTime,
	}
}

// NotifyState keeps the latest state for status and metrics.
func (d *autopilotDelegate) NotifyState(s *autopilot.State) {
	d.mu.Lock()
	d.state = s
	d.mu.Unlock()
}

// latest is the last state autopilot reported, nil if none.
func (d *autopilotDelegate) latest() *autopilot.State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// FetchServerStats asks each server for its raft figures.
func (d *autopilotDelegate) FetchServerStats(ctx context.Context, servers map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	out := make(map[raft.ServerID]*autopilot.ServerStats, len(servers))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range servers {
		if string(id) == d.c.cfg.NodeID {
			st := d.c.localStatus()
			// Peers' answers may already be arriving: out is shared.
			mu.Lock()
			out[id] = &autopilot.ServerStats{LastContact: lastContact(st.LastContactMs), LastTerm: st.Term, LastIndex: st.LastIndex}
			mu.Unlock()
			continue
		}
		addr, ok := d.c.rpcAddrOf(string(id))
		if !ok {
			continue
		}
		wg.Go(func() {
			sent := time.Now()
			resp, err := d.c.clusterClient(addr).Status(ctx, connect.NewRequest(&vbatchv1.StatusRequest{}))
			if err != nil {
				return
			}
			d.c.notePeerDisk(string(id), resp.Msg.RaftAddr, resp.Msg.LogWriteMs)
			if resp.Msg.NodeId == string(id) {
				d.c.identities.note(string(id), resp.Msg)
			}
			d.c.skews.note(string(id), sent, time.Now(), resp.Msg.UnixMs, d.c.cfg.clockOffset)
			mu.Lock()
			out[id] = &autopilot.ServerStats{LastContact: lastContact(resp.Msg.LastContactMs), LastTerm: resp.Msg.Term, LastIndex: resp.Msg.LastIndex}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// lastContact converts a status's last_contact_ms (-1: never) for
// autopilot, which reads a negative duration as unhealthy.
func lastContact(ms int64) time.Duration {
	if ms < 0 {
		return -1
	}
	return time.Duration(ms) * time.Millisecond
}

// KnownServers lists every raft server with its gossip status. A server
// gossip has lost counts as alive for DeadServerGrace (a restart or a
// short outage must not shrink the cluster), then as failed, which lets
// autopilot remove it. Servers gossip knows but raft does not are listed
// too; autopilot leaves them to reconcileMembers.
func (d *autopilotDelegate) KnownServers() map[raft.ServerID]*autopilot.Server {
	f := d.c.raftNode.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	alive := map[raft.ServerID]gossip.Member{}
	for _, m := range d.c.pool.MembersWithRole(gossip.RoleCoordinator) {
		alive[raft.ServerID(m.Name)] = m
	}
	_, leader := d.c.raftNode.raft.LeaderWithID()
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[raft.ServerID]*autopilot.Server{}
	inRaft := map[raft.ServerID]bool{}
	for _, s := range f.Configuration().Servers {
		inRaft[s.ID] = true
		status := autopilot.NodeAlive
		if _, ok := alive[s.ID]; ok || string(s.ID) == d.c.cfg.NodeID {
			delete(d.missingSince, s.ID)
		} else {
			since, seen := d.missingSince[s.ID]
			if !seen {
				since = now
				d.missingSince[s.ID] = now
			}
			if now.Sub(since) >= d.c.cfg.DeadServerGrace {
				status = autopilot.NodeFailed
			}
		}
		out[s.ID] = d.server(s.ID, s.Address, status, s.ID == leader)
	}
	for id := range d.missingSince {
		if !inRaft[id] {
			delete(d.missingSince, id)
		}
	}
	for id, m := range alive {
		if !inRaft[id] {
			out[id] = d.server(id, raft.ServerAddress(m.Meta.RaftAddr), autopilot.NodeAlive, false)
		}
	}
	return out
}

func (d *autopilotDelegate) server(id raft.ServerID, addr raft.ServerAddress, status autopilot.NodeStatus, leader bool) *autopilot.Server {
	return &autopilot.Server{
		ID:          id,
		Name:        string(id),
		Address:     addr,
		NodeStatus:  status,
		Version:     version.Version,
		RaftVersion: raft.ProtocolVersionMax,
		IsLeader:    leader,
		NodeType:    autopilot.NodeVoter,
	}
}

// RemoveFailedServer takes a coordinator that stayed out of gossip past
// the grace period out of raft.
func (d *autopilotDelegate) RemoveFailedServer(s *autopilot.Server) {
	c := d.c
	c.log.Warn("autopilot removing dead coordinator", "node", s.ID, "grace", c.cfg.DeadServerGrace.String())
	if err := c.raftNode.await(c.raftNode.raft.RemoveServer(s.ID, 0, 5*time.Second)); err != nil {
		c.log.Error("autopilot: remove dead coordinator", "node", s.ID, "err", err)
		return
	}
	c.metrics.AutopilotRemoved.Inc()
	if _, err := c.commitBarrier("autopilot remove"); err != nil {
		c.log.Warn("commit after configuration change", "err", err)
	}
}

// AutopilotHealth is the leader's autopilot view; it is nil until the
// first state update of this term, and on followers.
func (c *Coordinator) autopilotHealth() *vbatchv1.AutopilotHealthResponse {
	s := c.autopilot.latest()
	if s == nil {
		return nil
	}
	out := &vbatchv1.AutopilotHealthResponse{
		Healthy:             s.Healthy,
		FailureTolerance:    int32(s.FailureTolerance),
		StabilizationTimeMs: c.cfg.ServerStabilizationTime.Milliseconds(),
		LeaderId:            string(s.Leader),
		DeadServerGraceMs:   c.cfg.DeadServerGrace.Milliseconds(),
	}
	for _, ss := range s.Servers {
		srv := &vbatchv1.AutopilotServer{
			Id:         string(ss.Server.ID),
			Address:    string(ss.Server.Address),
			NodeStatus: string(ss.Server.NodeStatus),
			RaftState:  string(ss.State),
			Healthy:    ss.Health.Healthy,
			LastTerm:   ss.Stats.LastTerm,
			LastIndex:  ss.Stats.LastIndex,
		}
		srv.LastContactMs = ss.Stats.LastContact.Milliseconds()
		if !ss.Health.StableSince.IsZero() {
			srv.StableSinceUnixMs = ss.Health.StableSince.UnixMilli()
		}
		out.Servers = append(out.Servers, srv)
	}
	return out
}

// lastContactMs reads raft's last_contact stat: 0 on the leader, -1 if
// this node never heard from one.
func lastContactMs(r *raft.Raft) int64 {
	if r.State() == raft.Leader {
		return 0
	}
	v := r.Stats()["last_contact"]
	switch v {
	case "", "never":
		return -1
	case "0":
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, nerr := strconv.ParseInt(v, 10, 64); nerr == nil {
			return n
		}
		return -1
	}
	return d.Milliseconds()
}

// isVoter reports whether id is a voter in the current configuration.
func (c *Coordinator) isVoter(id string) bool {
	for _, s := range c.voters() {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

// autopilotView is the leader's autopilot state for the metrics: computed
// locally on the leader; on a follower, the copy autopilotCacheLoop last
// fetched from the leader, so a scrape never waits on the network (nil when
// that copy is stale: the figures are then absent, not wrong).
func (c *Coordinator) autopilotView() *monitoring.AutopilotView {
	if c.IsLeader() {
		if h := c.autopilotHealth(); h != nil {
			return toAutopilotView(h)
		}
		return nil
	}
	c.apCache.mu.Lock()
	defer c.apCache.mu.Unlock()
	if c.apCache.view == nil || time.Since(c.apCache.at) > 3*c.cfg.Timing.AutopilotInterval+2*time.Second {
		return nil
	}
	return c.apCache.view
}

// autopilotCache is a follower's copy of the leader's autopilot state.
type autopilotCache struct {
	mu   sync.Mutex
	view *monitoring.AutopilotView
	at   time.Time
}

// autopilotCacheLoop refreshes, on followers, the copy of the leader's
// autopilot state the metrics show.
func (c *Coordinator) autopilotCacheLoop(ctx context.Context) {
	tick := time.NewTicker(c.cfg.Timing.AutopilotInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if c.IsLeader() {
			continue
		}
		h, err := c.AutopilotHealth(ctx)
		if err != nil {
			continue
		}
		c.apCache.mu.Lock()
		c.apCache.view, c.apCache.at = toAutopilotView(h), time.Now()
		c.apCache.mu.Unlock()
	}
}

func toAutopilotView(h *vbatchv1.AutopilotHealthResponse) *monitoring.AutopilotView {
	v := &monitoring.AutopilotView{Healthy: h.Healthy, FailureTolerance: int(h.FailureTolerance), Servers: map[string]bool{}}
	for _, s := range h.Servers {
		v.Servers[s.Id] = s.Healthy
	}
	return v
}

// AutopilotHealth returns the leader's autopilot state, asking the leader
// when this node does not lead.
func (c *Coordinator) AutopilotHealth(ctx context.Context) (*vbatchv1.AutopilotHealthResponse, error) {
	if c.IsLeader() {
		if h := c.autopilotHealth(); h != nil {
			return h, nil
		}
		return nil, errors.New("autopilot has no state yet")
	}
	_, leader := c.raftNode.raft.LeaderWithID()
	addr, ok := c.rpcAddrOf(string(leader))
	if leader == "" || !ok {
		return nil, errors.New("no leader known")
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := c.clusterClient(addr).AutopilotHealth(cctx, connect.NewRequest(&vbatchv1.AutopilotHealthRequest{}))
	if err != nil {
		return nil, fmt.Errorf("autopilot health from leader %s: %w", leader, err)
	}
	return resp.Msg, nil
}

// barrierRaft is the raft autopilot drives. After each configuration
// change it commits an empty command: configuration entries never reach
// the FSM, and consistent reads wait for an applied index past them.
type barrierRaft struct {
	*raft.Raft
	c *Coordinator
}

func (b *barrierRaft) after(f raft.IndexFuture, what string) raft.IndexFuture {
	// Autopilot waits on f itself afterwards, and a raft future must not
	// be waited on from two goroutines at once: no await here.
	if f.Error() == nil {
		if _, err := b.c.commitBarrier("autopilot " + what); err != nil {
			b.c.log.Warn("commit after configuration change", "err", err)
		}
	}
	return f
}

// AddNonvoter adds a non-voter, then commits a barrier.
func (b *barrierRaft) AddNonvoter(id raft.ServerID, addr raft.ServerAddress, prev uint64, timeout time.Duration) raft.IndexFuture {
	return b.after(b.Raft.AddNonvoter(id, addr, prev, timeout), "add non-voter")
}

// AddVoter adds or promotes a voter, then commits a barrier.
func (b *barrierRaft) AddVoter(id raft.ServerID, addr raft.ServerAddress, prev uint64, timeout time.Duration) raft.IndexFuture {
	return b.after(b.Raft.AddVoter(id, addr, prev, timeout), "add voter")
}

// DemoteVoter demotes a voter, then commits a barrier.
func (b *barrierRaft) DemoteVoter(id raft.ServerID, prev uint64, timeout time.Duration) raft.IndexFuture {
	return b.after(b.Raft.DemoteVoter(id, prev, timeout), "demote voter")
}

// RemoveServer removes a server, then commits a barrier.
func (b *barrierRaft) RemoveServer(id raft.ServerID, prev uint64, timeout time.Duration) raft.IndexFuture {
	return b.after(b.Raft.RemoveServer(id, prev, timeout), "remove server")
}

// toAutopilotStatus converts the leader's autopilot view for the API.
func toAutopilotStatus(h *vbatchv1.AutopilotHealthResponse) *api.AutopilotStatus {
	out := &api.AutopilotStatus{
		Healthy:           h.Healthy,
		FailureTolerance:  int(h.FailureTolerance),
		StabilizationTime: (time.Duration(h.StabilizationTimeMs) * time.Millisecond).String(),
		DeadServerGrace:   (time.Duration(h.DeadServerGraceMs) * time.Millisecond).String(),
	}
	for _, s := range h.Servers {
		sh := api.AutopilotServerHealth{
			ID: s.Id, NodeStatus: s.NodeStatus, RaftState: s.RaftState, Healthy: s.Healthy,
			LastContactMs: s.LastContactMs, LastIndex: s.LastIndex,
		}
		if s.StableSinceUnixMs > 0 {
			sh.StableSince = time.UnixMilli(s.StableSinceUnixMs).UTC().Format(time.RFC3339)
		}
		out.Servers = append(out.Servers, sh)
	}
	sort.Slice(out.Servers, func(i, j int) bool { return out.Servers[i].ID < out.Servers[j].ID })
	return out
}
