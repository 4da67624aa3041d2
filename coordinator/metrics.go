package coordinator

import (
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/monitoring"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// registerCollectors adds the scrape-time collectors to the coordinator's
// registry: the cluster state, and the Go runtime and process figures.
func (c *Coordinator) registerCollectors() {
	c.registry.MustRegister(
		monitoring.NewClusterCollector(clusterView{c: c}),
		monitoring.NewAutopilotCollector(c.autopilotView),
		monitoring.NewBlobCollector(blobView{c: c}),
		monitoring.NewClockSkewCollector(func() map[string]float64 {
			if !c.IsLeader() {
				return nil
			}
			return c.skews.current(time.Now())
		}),
		monitoring.NewGossipNameConflicts(c.gossipNameConflicts),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if c.tls != nil {
		c.registry.MustRegister(monitoring.NewCertExpiryGauge(func() int64 { return c.tls.Expires().Unix() }))
	}
}

// clusterView is monitoring.ClusterView over this coordinator's replicated
// state, gossip membership and the agent telemetry it holds.
type clusterView struct{ c *Coordinator }

var _ monitoring.ClusterView = clusterView{}

// Batches walks every batch under one read of the FSM.
func (v clusterView) Batches(fn func(*vbatchv1.Batch)) {
	v.c.fsm.View(func(s *fsm.State) {
		for _, b := range s.Batches {
			fn(b)
		}
	})
}

// Agents lists the registered agents: draining from raft, alive from
// gossip, figures from the latest telemetry this coordinator received.
func (v clusterView) Agents() []monitoring.AgentView {
	alive := map[string]bool{}
	for _, m := range v.c.pool.MembersWithRole(gossip.RoleAgent) {
		alive[m.Name] = true
	}
	tel := v.c.agents.latestTelemetry()
	var out []monitoring.AgentView
	v.c.fsm.View(func(s *fsm.State) {
		for _, a := range s.Agents {
			av := monitoring.AgentView{ID: a.Id}
			switch {
			case !alive[a.Id]:
				av.Status = monitoring.WorkerDead
			case a.Draining:
				av.Status = monitoring.WorkerDraining
			default:
				av.Status = monitoring.WorkerAlive
			}
			if t, ok := tel[a.Id]; ok {
				av.Telemetry, av.ReceivedAt = t.Report, t.ReceivedAt
			}
			out = append(out, av)
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Now is the clock telemetry arrival times are stamped with.
func (v clusterView) Now() time.Time { return v.c.Now() }

// Raft reads this node's raft figures.
func (v clusterView) Raft() monitoring.RaftView {
	r := v.c.raftNode.raft
	stats := r.Stats()
	num := func(key string) uint64 {
		n, _ := strconv.ParseUint(stats[key], 10, 64)
		return n
	}
	rv := monitoring.RaftView{
		Leader:      r.State() == raft.Leader,
		Term:        num("term"),
		LastIndex:   num("last_log_index"),
		CommitIndex: num("commit_index"),
		// raft's applied index, which counts every entry (commit notices,
		// no-ops, configuration changes), not only the FSM's commands, so
		// that last index minus applied index is the true backlog.
		AppliedIndex: num("applied_index"),
	}
	for _, s := range v.c.voters() {
		rv.Peers++
		if string(s.ID) == v.c.cfg.NodeID {
			rv.PeersAlive++
			continue
		}
		if _, ok := v.c.coordinatorMember(string(s.ID)); ok {
			rv.PeersAlive++
		}
	}
	return rv
}
