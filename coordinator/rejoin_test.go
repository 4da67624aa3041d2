package coordinator

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
)

func TestRejoinTargets(t *testing.T) {
	coord := func(name, addr string) gossip.Member {
		return gossip.Member{Name: name, Addr: addr, Meta: gossip.Meta{Role: gossip.RoleCoordinator}}
	}
	servers := []raft.Server{{ID: "c1"}, {ID: "c2"}, {ID: "c3"}}
	known := map[string]string{"c2": "10.0.0.2:8003", "c3": "10.0.0.3:8003"}
	addrs := func(ts []rejoinTarget) []string {
		var out []string
		for _, t := range ts {
			out = append(out, t.addr)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		join   []string
		alive  []gossip.Member
		known  map[string]string
		expect []string
	}{
		{"all present: nothing to do", []string{"10.0.0.2:8003"},
			[]gossip.Member{coord("c1", "10.0.0.1:8003"), coord("c2", "10.0.0.2:8003"), coord("c3", "10.0.0.3:8003")}, known, nil},
		{"a lost raft server by its last address, then join addresses not alive", []string{"10.0.0.2:8003", "10.0.0.9:8003"},
			[]gossip.Member{coord("c1", "10.0.0.1:8003"), coord("c2", "10.0.0.2:8003")}, known, []string{"10.0.0.3:8003", "10.0.0.9:8003"}},
		{"alone: join addresses, and every lost server", []string{"10.0.0.3:8003"},
			[]gossip.Member{coord("c1", "10.0.0.1:8003")}, known, []string{"10.0.0.2:8003", "10.0.0.3:8003"}},
		{"a lost server never seen: join addresses only", []string{"seed:8003"},
			[]gossip.Member{coord("c1", "10.0.0.1:8003"), coord("c2", "10.0.0.2:8003")}, map[string]string{}, []string{"seed:8003"}},
		{"agents do not count as coordinators", []string{"seed:8003"},
			[]gossip.Member{coord("c1", "10.0.0.1:8003"), {Name: "a1", Addr: "10.0.1.1:8003", Meta: gossip.Meta{Role: gossip.RoleAgent}}},
			map[string]string{}, []string{"seed:8003"}},
		{"an agent under a lost server's name does not hide it", nil,
			[]gossip.Member{coord("c1", "10.0.0.1:8003"), coord("c2", "10.0.0.2:8003"), {Name: "c3", Addr: "10.0.1.3:8003", Meta: gossip.Meta{Role: gossip.RoleAgent}}},
			known, []string{"10.0.0.3:8003"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := addrs(rejoinTargets("c1", tc.join, tc.alive, servers, tc.known))
			if !slices.Equal(got, tc.expect) {
				t.Fatalf("targets = %v, want %v", got, tc.expect)
			}
		})
	}
}

// TestGossipRejoinsAfterLongCut: a coordinator cut off the gossip network
// longer than memberlist remembers the dead (GossipToTheDeadTime, 60 probe
// intervals) is forgotten on both sides; once the network heals, the
// coordinators must find each other again, or the cluster stays split in
// gossip for good (no RPC address for the leader, newer commands off, and
// autopilot removing a healthy voter).
func TestGossipRejoinsAfterLongCut(t *testing.T) {
	// Short enough to forget the dead within seconds, long enough (a
	// 50 ms probe timeout) not to declare live nodes dead on a loaded
	// 2-core machine.
	const probe = 100 * time.Millisecond
	var mu sync.Mutex
	cuts := map[string]*cutTransport{}
	nodes := startCluster(t, 3, func(c *Config) {
		c.Timing.GossipProbeInterval = probe
		id := c.NodeID
		c.gossipTransport = func(inner memberlist.NodeAwareTransport) memberlist.NodeAwareTransport {
			ct := newCutTransport(inner)
			mu.Lock()
			cuts[id] = ct
			mu.Unlock()
			return ct
		}
	})
	sees := func(c *Coordinator) int { return len(c.pool.MembersWithRole(gossip.RoleCoordinator)) }
	waitFor(t, 20*time.Second, "all three in gossip", func() bool {
		return sees(nodes[0]) == 3 && sees(nodes[1]) == 3 && sees(nodes[2]) == 3
	})
	cut := nodes[2]
	mu.Lock()
	ct := cuts[cut.cfg.NodeID]
	mu.Unlock()
	ct.cut.Store(true)
	waitFor(t, 20*time.Second, "the split to be seen on both sides", func() bool {
		return sees(nodes[0]) == 2 && sees(nodes[1]) == 2 && sees(cut) == 1
	})
	// The cut lasts well past the time memberlist gossips to the dead, so
	// both sides have forgotten each other when it heals: the length of the
	// outage is the scenario, not a wait for a condition.
	time.Sleep(2 * 60 * probe)
	ct.cut.Store(false)
	waitFor(t, 30*time.Second, "all three in gossip again after the cut healed", func() bool {
		return sees(nodes[0]) == 3 && sees(nodes[1]) == 3 && sees(cut) == 3
	})
	leader := waitLeader(t, nodes)
	waitFor(t, 5*time.Second, "the leader to see every server at its FSM level", func() bool {
		return leader.clusterAtFSMLevel(fsm.Level)
	})
	waitFor(t, 5*time.Second, "the cut node to know the leader's RPC address", func() bool {
		_, ok := cut.rpcAddrOf(leader.cfg.NodeID)
		return ok
	})
}
