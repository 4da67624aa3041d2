package fsm

import (
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// registerAgent inserts or replaces an agent: an agent registers again
// after every restart, with its current GPUs and models.
func (a *applyCtx) registerAgent(c *vbatchv1.RegisterAgent) error {
	ag := c.GetAgent()
	if ag.GetId() == "" {
		return Reject(ErrInvalid, "agent needs an id")
	}
	ag = proto.Clone(ag).(*vbatchv1.Agent)
	if ag.RegisteredAt == 0 {
		ag.RegisteredAt = a.sec()
	}
	a.s.Agents[ag.Id] = ag
	return nil
}

// removeAgent forgets an agent and hands its chunks back: they keep their
// committed progress and become pending for another agent.
func (a *applyCtx) removeAgent(c *vbatchv1.RemoveAgent) error {
	if _, ok := a.s.Agents[c.AgentId]; !ok {
		return Reject(ErrNotFound, "agent %s", c.AgentId)
	}
	// Only a batch that has not ended holds leased chunks.
	a.s.LiveBatches(func(b *vbatchv1.Batch) bool {
		for _, ch := range b.Chunks {
			if ch.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED && ch.Lease.GetAgentId() == c.AgentId {
				endLease(ch)
			}
		}
		return true
	})
	delete(a.s.Agents, c.AgentId)
	return nil
}

// drainAgent stops new leases to an agent; the leases it holds run on
// until the agent hands them back.
func (a *applyCtx) drainAgent(c *vbatchv1.DrainAgent) error {
	ag, ok := a.s.Agents[c.AgentId]
	if !ok {
		return Reject(ErrNotFound, "agent %s", c.AgentId)
	}
	ag.Draining = true
	return nil
}

// undrainAgent lets a draining agent take leases again.
func (a *applyCtx) undrainAgent(c *vbatchv1.UndrainAgent) error {
	ag, ok := a.s.Agents[c.AgentId]
	if !ok {
		return Reject(ErrNotFound, "agent %s", c.AgentId)
	}
	ag.Draining = false
	return nil
}

// setServerIncarnation records the incarnation of a coordinator's raft
// state, or forgets it when the incarnation is empty.
func (a *applyCtx) setServerIncarnation(c *vbatchv1.SetServerIncarnation) error {
	if c.NodeId == "" {
		return Reject(ErrInvalid, "server incarnation needs a node id")
	}
	if c.Incarnation == "" {
		delete(a.s.Incarnations, c.NodeId)
		return nil
	}
	a.s.Incarnations[c.NodeId] = c.Incarnation
	return nil
}
