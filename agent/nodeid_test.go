package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/gossip"
)

// TestAgentWithTakenIDRefusesToStart: an agent whose node id gossip
// already lists at another address (a cloned host) stops at start with an
// error naming the other node, counts the conflict in its metrics, and
// leaves the pool listing the first node.
func TestAgentWithTakenIDRefusesToStart(t *testing.T) {
	label := DefaultConfig().ClusterName
	coord, err := gossip.Start(gossip.Config{Name: "coord-1", BindAddr: "127.0.0.1:0", Label: label,
		Meta: gossip.Meta{Role: gossip.RoleCoordinator, RPCAddr: "127.0.0.1:1"}, ProbeInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Leave(time.Second)
	first, err := gossip.Start(gossip.Config{Name: "cloned", BindAddr: "127.0.0.1:0", Label: label,
		Meta: gossip.Meta{Role: gossip.RoleAgent}, ProbeInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Leave(time.Second)
	if _, err := first.Join([]string{coord.Addr()}); err != nil {
		t.Fatal(err)
	}

	cfg := DefaultConfig()
	cfg.NodeID = "cloned"
	cfg.DataDir = t.TempDir()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.Join = []string{coord.Addr()}
	cfg.ShutdownTimeout = 5 * time.Second
	a := New(cfg, newFakeEngine(), nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if !errors.Is(err, gossip.ErrNameConflict) || !strings.Contains(err.Error(), first.Addr()+" (agent)") {
		t.Fatalf("run: %v, want ErrNameConflict naming the first agent at %s", err, first.Addr())
	}
	if ctx.Err() != nil {
		t.Fatal("Run returned only when its context ended")
	}
	mfs, err := a.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var conflicts float64
	for _, mf := range mfs {
		if mf.GetName() == "vbatch_gossip_name_conflicts_total" {
			conflicts = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if conflicts < 1 {
		t.Errorf("vbatch_gossip_name_conflicts_total = %v, want at least 1", conflicts)
	}
	if m, ok := coord.MemberWithRole("cloned", gossip.RoleAgent); !ok || m.Addr != first.Addr() {
		t.Errorf("the pool lists cloned as %+v (found %v), want the first agent", m, ok)
	}
}
