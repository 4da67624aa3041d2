package coordinator

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// joinPool starts a gossip member of role named name, joined to c's pool,
// and waits until c lists it.
func joinPool(t *testing.T, c *Coordinator, name string, meta gossip.Meta) *gossip.Pool {
	t.Helper()
	p, err := gossip.Start(gossip.Config{Name: name, BindAddr: "127.0.0.1:0", Label: c.cfg.ClusterName, Meta: meta,
		ProbeInterval: c.cfg.Timing.GossipProbeInterval})
	if err != nil {
		t.Fatalf("start gossip member %s: %v", name, err)
	}
	t.Cleanup(func() { _ = p.Leave(time.Second) })
	if _, err := p.Join([]string{c.pool.Addr()}); err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
	waitFor(t, 10*time.Second, "gossip listing "+name, func() bool { _, ok := c.pool.Member(name); return ok })
	return p
}

// TestRegisterRefusesCoordinatorIDs: an agent may not register under the
// node id of this coordinator, of another server of the raft
// configuration, or of a coordinator that gossip lists but raft does not
// have yet; any other id registers.
func TestRegisterRefusesCoordinatorIDs(t *testing.T) {
	nodes := startCluster(t, 2)
	leader := waitLeader(t, nodes)
	joinPool(t, leader, "c9", gossip.Meta{Role: gossip.RoleCoordinator})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	register := func(id string) error {
		_, err := leader.agents.Register(ctx, connect.NewRequest(&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: id, Models: []string{"m"}}}))
		return err
	}
	for _, id := range []string{"c1", "c2", "c9"} {
		err := register(id)
		if connect.CodeOf(err) != connect.CodeAlreadyExists || !errors.Is(err, errAgentIDTaken) {
			t.Fatalf("register agent %s: %v, want AlreadyExists", id, err)
		}
		if !strings.Contains(err.Error(), "coordinator") || !strings.Contains(err.Error(), "--node-id") {
			t.Errorf("register agent %s: %q does not say what is wrong", id, err)
		}
	}
	if err := register("a1"); err != nil {
		t.Fatalf("register agent a1: %v", err)
	}
}

// TestGossipLookupsCheckRole: a coordinator looked up by name must be a
// coordinator in gossip and an agent an agent, since both kinds share
// gossip's names. An agent is not a peer with an RPC address, and a
// coordinator's name does not make a leasing agent alive.
func TestGossipLookupsCheckRole(t *testing.T) {
	nodes := startCluster(t, 2)
	leader := waitLeader(t, nodes)
	other := others(nodes, leader)[0]
	joinPool(t, leader, "ghost", gossip.Meta{Role: gossip.RoleAgent, RPCAddr: "127.0.0.1:1", FSM: 1})
	if addr, ok := leader.rpcAddrOf("ghost"); ok {
		t.Errorf("rpcAddrOf(ghost) = %s: an agent taken for a coordinator", addr)
	}
	if addr, ok := leader.rpcAddrOf(other.cfg.NodeID); !ok || addr != other.rpcAdvertise {
		t.Errorf("rpcAddrOf(%s) = %s, %v; want %s", other.cfg.NodeID, addr, ok, other.rpcAdvertise)
	}
	ctx := context.Background()
	if leader.agents.waitListed(ctx, other.cfg.NodeID, time.Now().Add(100*time.Millisecond)) {
		t.Errorf("waitListed(%s): a coordinator taken for a live agent", other.cfg.NodeID)
	}
	if !leader.agents.waitListed(ctx, "ghost", time.Now().Add(time.Second)) {
		t.Error("waitListed(ghost): the agent is not listed")
	}
}

// TestCoordinatorWithTakenIDRefusesToStart: a coordinator whose node id an
// agent already holds in gossip fails to start, naming the conflict, and
// the pool keeps the agent; the coordinator it asked counts the conflict.
func TestCoordinatorWithTakenIDRefusesToStart(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := nodes[0]
	agent := joinPool(t, leader, "twin", gossip.Meta{Role: gossip.RoleAgent})
	cfg := nodeConfig(t, "twin", 1, []string{leader.pool.Addr()})
	c, err := Start(cfg, leader.log, io.Discard)
	if err == nil {
		_ = c.Close()
		t.Fatal("a coordinator started under an agent's gossip name")
	}
	if !errors.Is(err, gossip.ErrNameConflict) || !strings.Contains(err.Error(), agent.Addr()+" (agent)") {
		t.Fatalf("start: %v, want ErrNameConflict naming the agent at %s", err, agent.Addr())
	}
	waitFor(t, 5*time.Second, "the conflict in the metrics", func() bool {
		v, ok := value(scrape(t, leader), "vbatch_gossip_name_conflicts_total", nil)
		return ok && v >= 1
	})
	if m, ok := leader.pool.MemberWithRole("twin", gossip.RoleAgent); !ok || m.Addr != agent.Addr() {
		t.Fatalf("the pool lists twin as %+v (found %v), want the agent", m, ok)
	}
}
