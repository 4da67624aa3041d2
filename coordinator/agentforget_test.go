package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestLeaderForgetsGoneAgents: an agent registered but absent from gossip
// for AgentForgetAfter is removed; one that gossip lists stays.
func TestLeaderForgetsGoneAgents(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.AgentForgetAfter = 500 * time.Millisecond })
	live, err := gossip.Start(gossip.Config{Name: "live", BindAddr: "127.0.0.1:0", ProbeInterval: 500 * time.Millisecond, Label: nodes[0].cfg.ClusterName,
		Meta: gossip.Meta{Role: gossip.RoleAgent}})
	if err != nil {
		t.Fatalf("start agent gossip: %v", err)
	}
	t.Cleanup(func() { live.Leave(200 * time.Millisecond) })
	if _, err := live.Join([]string{nodes[0].pool.Addr()}); err != nil {
		t.Fatalf("join: %v", err)
	}
	// Every coordinator, the leader among them, lists it before it
	// registers: the test is about forgetting, not gossip's spread.
	waitFor(t, 20*time.Second, "every coordinator's gossip to list the live agent", func() bool {
		for _, c := range nodes {
			if _, ok := c.pool.Member("live"); !ok {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range []string{"live", "ghost"} {
		if _, err := nodes[0].Apply(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: id, Models: []string{"m"}}}); err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
	}
	registered := func(id string) bool {
		if err := nodes[0].ConsistentRead(ctx); err != nil {
			t.Fatalf("consistent read: %v", err)
		}
		var ok bool
		nodes[0].fsm.View(func(s *fsm.State) { _, ok = s.Agents[id] })
		return ok
	}
	waitFor(t, 20*time.Second, "the agent gossip never saw to be removed", func() bool { return !registered("ghost") })
	// The leader's record of "live" being absent would have had as long.
	if !registered("live") {
		t.Fatal("an agent gossip lists was removed")
	}
}

func TestPruneTelemetry(t *testing.T) {
	s := &agentService{telemetry: map[string]*AgentTelemetry{}}
	now := time.Unix(1_700_000_000, 0)
	for id, age := range map[string]time.Duration{"listed": time.Hour, "removed-old": time.Hour, "removed-new": time.Minute} {
		s.telemetry[id] = &AgentTelemetry{Report: &vbatchv1.TelemetryRequest{AgentId: id}, ReceivedAt: now.Add(-age)}
	}
	dropped := s.pruneTelemetry(map[string]bool{"listed": true}, now)
	if len(dropped) != 1 || dropped[0] != "removed-old" {
		t.Fatalf("dropped %v, want [removed-old]", dropped)
	}
	if _, ok := s.telemetry["removed-new"]; !ok {
		t.Fatal("dropped the fresh telemetry of an agent not listed yet")
	}
}
