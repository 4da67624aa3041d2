package coordinator

import (
	"context"
	"errors"
	"time"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// telemetryKeep is how long a coordinator keeps the last telemetry of an
// agent the replicated state no longer lists: long enough for a new
// agent's first reports, which may arrive before its registration applies.
const telemetryKeep = 10 * time.Minute

// forgetAgents removes, on the leader, the agents gone from gossip for
// AgentForgetAfter. absentSince is this leadership's record of when it
// first missed each one, so a new leader waits the whole time again. A
// removed agent's leases go back to pending (long since, in practice: the
// leader re-queues a dead agent's chunks at once), its metrics series end,
// and an agent that comes back registers again.
func (c *Coordinator) forgetAgents(ctx context.Context, absentSince map[string]time.Time) {
	if c.cfg.AgentForgetAfter <= 0 {
		return
	}
	now := c.Now()
	alive := map[string]bool{}
	for _, m := range c.pool.MembersWithRole(gossip.RoleAgent) {
		alive[m.Name] = true
	}
	var forget []string
	c.fsm.View(func(s *fsm.State) {
		for id := range absentSince {
			if _, ok := s.Agents[id]; !ok || alive[id] {
				delete(absentSince, id)
			}
		}
		for id := range s.Agents {
			if alive[id] {
				continue
			}
			since, ok := absentSince[id]
			if !ok {
				absentSince[id] = now
			} else if now.Sub(since) >= c.cfg.AgentForgetAfter {
				forget = append(forget, id)
			}
		}
	})
	for _, id := range forget[:min(len(forget), housekeepBatch)] {
		_, err := c.applyAsLeader(ctx, &vbatchv1.RemoveAgent{AgentId: id})
		switch {
		case err == nil, errors.Is(err, fsm.ErrNotFound):
			delete(absentSince, id)
			c.log.Info("agent removed: gone from gossip too long", "agent", id, "after", c.cfg.AgentForgetAfter)
		default:
			c.log.Warn("remove agent gone from gossip", "agent", id, "err", err)
		}
	}
}

// telemetryPruneEvery is how often a coordinator drops the telemetry of
// removed agents.
const telemetryPruneEvery = time.Minute

// telemetryPruneLoop drops, on every coordinator, what it keeps about
// agents the state no longer lists: their last telemetry and their XID
// counter series.
func (c *Coordinator) telemetryPruneLoop(ctx context.Context) {
	t := time.NewTicker(telemetryPruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var listed map[string]bool
		c.fsm.View(func(s *fsm.State) {
			listed = make(map[string]bool, len(s.Agents))
			for id := range s.Agents {
				listed[id] = true
			}
		})
		for _, id := range c.agents.pruneTelemetry(listed, c.Now()) {
			c.metrics.XIDErrors.DeleteLabelValues(id)
		}
	}
}

// pruneTelemetry drops the telemetry of agents not listed (removed) once it
// is older than telemetryKeep, and returns their ids.
func (s *agentService) pruneTelemetry(listed map[string]bool, now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var dropped []string
	for id, t := range s.telemetry {
		if !listed[id] && now.Sub(t.ReceivedAt) > telemetryKeep {
			delete(s.telemetry, id)
			dropped = append(dropped, id)
		}
	}
	return dropped
}
