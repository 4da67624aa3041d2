package coordinator

import (
	"context"
	"fmt"
	"sort"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Agents describes every registered agent: registration from raft,
// liveness from gossip, figures from the latest telemetry.
func (c *Coordinator) Agents(ctx context.Context) ([]api.AgentInfo, error) {
	alive := map[string]bool{}
	for _, m := range c.pool.MembersWithRole(gossip.RoleAgent) {
		alive[m.Name] = true
	}
	tel := c.agents.latestTelemetry()
	var out []api.AgentInfo
	c.fsm.View(func(s *fsm.State) {
		leases := map[string]int{}
		s.LiveBatches(func(b *vbatchv1.Batch) bool {
			for _, ch := range b.Chunks {
				if fsm.LiveLease(ch, s.Now) {
					leases[ch.Lease.AgentId]++
				}
			}
			return true
		})
		for _, a := range s.Agents {
			info := api.AgentInfo{
				ID: a.Id, RPCAddr: a.RpcAddr, Models: append([]string(nil), a.Models...),
				LiveLeases: leases[a.Id], RegisteredAt: a.RegisteredAt, GPUs: a.Gpus,
			}
			// A drained agent that was then stopped (retired) is dead.
			switch {
			case !alive[a.Id]:
				info.State = "dead"
			case a.Draining:
				info.State = "draining"
			default:
				info.State = "alive"
			}
			if alive[a.Id] {
				// Gossip probed it within the last few probe intervals.
				info.LastSeen = c.Now().Unix()
			}
			if t, ok := tel[a.Id]; ok {
				info.LastSeen = max(info.LastSeen, t.ReceivedAt.Unix())
				if len(t.Report.Gpus) > 0 {
					info.GPUs = t.Report.Gpus
				}
			}
			out = append(out, info)
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// RemoveAgent forgets an agent that has left gossip and hands its leased
// chunks back, as the leader does on its own after AgentForgetAfter. An
// agent still alive in this coordinator's gossip view is refused: it would
// register again with its next call, and its leases would be cut under it.
func (c *Coordinator) RemoveAgent(ctx context.Context, id string) error {
	if _, ok := c.pool.MemberWithRole(id, gossip.RoleAgent); ok {
		return fmt.Errorf("%w: agent %s is alive in gossip; stop it first (vbctl agents drain %s --wait, then stop its vbatch-agent service), then remove it", fsm.ErrConflict, id, id)
	}
	_, err := c.Apply(ctx, &vbatchv1.RemoveAgent{AgentId: id})
	return err
}

// UndrainAgent lets a draining agent take leases again.
func (c *Coordinator) UndrainAgent(ctx context.Context, id string) error {
	_, err := c.Apply(ctx, &vbatchv1.UndrainAgent{AgentId: id})
	return err
}

// DrainAgent marks an agent draining: it gets no new leases, and its
// renewals answer "cancelled" so it commits what finished and hands back.
func (c *Coordinator) DrainAgent(ctx context.Context, id string) error {
	_, err := c.Apply(ctx, &vbatchv1.DrainAgent{AgentId: id})
	return err
}
