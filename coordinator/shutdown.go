package coordinator

import (
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// closeTransferTimeout bounds the leadership hand-over that starts Close.
const closeTransferTimeout = 2 * time.Second

// handOffLeadership, on a leader about to shut down, hands leadership to
// another voter first. Without it the cluster has no leader from the
// moment raft stops until the others' election timeout, and Close first
// drains the API and RPC servers for up to 5 s (lease long-polls keep them
// busy), during which this node still leads but serves nothing new: writes
// would stall for seconds. A failed or slow hand-over is logged and Close
// goes on; the others then elect a leader as after a crash.
func (c *Coordinator) handOffLeadership() {
	r := c.raftNode.raft
	if r.State() != raft.Leader {
		return
	}
	target, ok := c.handOffTarget()
	if !ok {
		c.log.Info("shutting down as leader with no other live voter to hand leadership to")
		return
	}
	start := time.Now()
	f := r.LeadershipTransferToServer(target.ID, target.Address)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			c.log.Warn("leadership hand-over before shutdown failed", "to", target.ID, "err", err)
			return
		}
		c.log.Info("leadership handed over before shutdown", "to", target.ID, "took", time.Since(start).String())
	case <-time.After(closeTransferTimeout):
		c.log.Warn("leadership hand-over before shutdown timed out", "to", target.ID, "timeout", closeTransferTimeout.String())
	}
}

// handOffTarget picks the voter to hand leadership to: one gossip lists
// (raft's own pick may be a dead voter whose log matched when it died),
// preferring the healthy ones autopilot saw furthest along.
func (c *Coordinator) handOffTarget() (raft.Server, bool) {
	type candidate struct {
		srv     raft.Server
		healthy bool
		index   uint64
	}
	var cands []candidate
	state := c.autopilot.latest()
	for _, s := range c.voters() {
		if string(s.ID) == c.cfg.NodeID {
			continue
		}
		if _, alive := c.coordinatorMember(string(s.ID)); !alive {
			continue
		}
		cand := candidate{srv: s}
		if state != nil {
			if ss, ok := state.Servers[s.ID]; ok {
				cand.healthy, cand.index = ss.Health.Healthy, ss.Stats.LastIndex
			}
		}
		cands = append(cands, cand)
	}
	if len(cands) == 0 {
		return raft.Server{}, false
	}
	best := slices.MaxFunc(cands, func(a, b candidate) int {
		switch {
		case a.healthy != b.healthy:
			if a.healthy {
				return 1
			}
			return -1
		case a.index != b.index:
			if a.index > b.index {
				return 1
			}
			return -1
		}
		return 0
	})
	return best.srv, true
}
