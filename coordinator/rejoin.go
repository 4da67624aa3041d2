package coordinator

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/gossip"
)

// After a network cut, memberlist declares the members on the other side
// dead, gossips to them for a while (gossip.Config.GossipToTheDeadTime, 30 s)
// and then forgets them: neither side ever contacts the other again, though
// raft, on its own connections, heals at once. A coordinator then has no RPC
// address for the leader (forwarded writes fail), the leader counts it as
// gone (newer raft commands stay off) and, after --dead-server-grace,
// autopilot removes a healthy voter. So, as Serf's reconnect does, every
// coordinator keeps looking for the raft servers and --join addresses gossip
// does not list, and joins them again.

// rejoinProbes is the rejoin period in gossip probe intervals (5 s with
// the LAN timings): a few times faster than the dead are forgotten.
const rejoinProbes = 10

// rejoinTarget is a gossip address to join again, and the coordinator
// expected there ("" for a --join address).
type rejoinTarget struct {
	addr string
	node string
}

// rejoinTargets lists what to join again: the last gossip address of each
// raft server other than self that gossip does not list (known holds the
// addresses members had while they were alive), then, while a raft server
// is missing or no other coordinator is seen, every join address that is
// not a live member's. Each address appears once.
func rejoinTargets(self string, join []string, alive []gossip.Member, servers []raft.Server, known map[string]string) []rejoinTarget {
	live := map[string]bool{}
	liveAddr := map[string]bool{}
	coords := 0
	for _, m := range alive {
		liveAddr[m.Addr] = true
		if m.Meta.Role == gossip.RoleCoordinator {
			live[m.Name] = true
			if m.Name != self {
				coords++
			}
		}
	}
	var out []rejoinTarget
	seen := map[string]bool{}
	add := func(addr, node string) {
		if addr != "" && !seen[addr] && !liveAddr[addr] {
			seen[addr] = true
			out = append(out, rejoinTarget{addr: addr, node: node})
		}
	}
	missing := false
	for _, s := range servers {
		id := string(s.ID)
		if id == self || live[id] {
			continue
		}
		missing = true
		add(known[id], id)
	}
	if missing || coords == 0 {
		for _, a := range join {
			add(a, "")
		}
	}
	return out
}

// rejoiner is the rejoin loop's memory.
type rejoiner struct {
	// known is each coordinator's gossip address when last seen alive.
	known map[string]string
	// failing marks the targets whose last join failed, so that a target
	// that stays unreachable is logged once, not every period.
	failing map[string]bool
}

// remember notes the gossip address of every live coordinator other than
// self, and returns the names of the live coordinators.
func (r *rejoiner) remember(alive []gossip.Member, self string) map[string]bool {
	live := map[string]bool{}
	for _, m := range alive {
		if m.Meta.Role != gossip.RoleCoordinator {
			continue
		}
		live[m.Name] = true
		if m.Name != self {
			r.known[m.Name] = m.Addr
		}
	}
	return live
}

// rejoinLoop keeps this coordinator in one gossip pool with the raft
// servers and the --join addresses; see rejoinTargets.
func (c *Coordinator) rejoinLoop(ctx context.Context) {
	period := rejoinProbes * c.cfg.Timing.GossipProbeInterval
	r := &rejoiner{known: map[string]string{}, failing: map[string]bool{}}
	r.remember(c.pool.Members(), c.cfg.NodeID)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.rejoinPass(ctx, r, period)
	}
}

// rejoinPass joins each current target once.
func (c *Coordinator) rejoinPass(ctx context.Context, r *rejoiner, period time.Duration) {
	alive := c.pool.Members()
	var servers []raft.Server
	if f := c.raftNode.raft.GetConfiguration(); f.Error() == nil {
		servers = f.Configuration().Servers
	}
	inRaft := map[string]bool{}
	for _, s := range servers {
		inRaft[string(s.ID)] = true
	}
	live := r.remember(alive, c.cfg.NodeID)
	for id := range r.known {
		if !inRaft[id] && !live[id] {
			delete(r.known, id) // removed from raft while gone: nothing to rejoin
		}
	}
	targets := rejoinTargets(c.cfg.NodeID, c.cfg.Join, alive, servers, r.known)
	for addr := range r.failing {
		if !containsTarget(targets, addr) {
			delete(r.failing, addr)
		}
	}
	for _, t := range targets {
		if ctx.Err() != nil {
			return
		}
		if _, back := c.coordinatorMember(t.node); t.node != "" && back {
			continue // an earlier join of this pass brought it back
		}
		before := len(c.pool.Members())
		_, err := c.pool.Join([]string{t.addr})
		if err != nil {
			c.logRejoinFailure(r, t, err, period)
			continue
		}
		delete(r.failing, t.addr)
		if t.node != "" {
			if _, ok := c.coordinatorMember(t.node); ok {
				c.log.Info("gossip rejoined a coordinator it had lost", "node", t.node, "gossip_addr", t.addr)
			}
		} else if after := len(c.pool.Members()); after > before {
			c.log.Info("gossip rejoined the pool through a join address", "join_addr", t.addr, "members", after)
		}
	}
}

// logRejoinFailure logs the first failure of a target at info level and
// the ones after it, every period while it stays unreachable, at debug.
func (c *Coordinator) logRejoinFailure(r *rejoiner, t rejoinTarget, err error, period time.Duration) {
	switch {
	case errors.Is(err, gossip.ErrNameConflict):
		if !r.failing[t.addr] {
			c.log.Error("gossip pool lists this node's id at another node; cannot rejoin it", "gossip_addr", t.addr, "err", err)
		}
	case !r.failing[t.addr]:
		c.log.Info("gossip rejoin failed; retrying quietly", "node", t.node, "gossip_addr", t.addr, "every", period.String(), "err", err)
	default:
		c.log.Debug("gossip rejoin failed", "node", t.node, "gossip_addr", t.addr, "err", err)
	}
	r.failing[t.addr] = true
}

func containsTarget(ts []rejoinTarget, addr string) bool {
	for _, t := range ts {
		if t.addr == addr {
			return true
		}
	}
	return false
}
