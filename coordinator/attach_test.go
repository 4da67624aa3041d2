package coordinator

import (
	"context"
	"net"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestRefusedTellsAClosedPortFromAnOpenOne(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := ln.Addr().String()
	if refused(open) {
		t.Fatal("an open port reads as refused")
	}
	ln.Close()
	if !refused(open) {
		t.Fatal("a closed port does not read as refused")
	}
}

func TestNoLeaseForAnAgentGossipDoesNotList(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	ctx := context.Background()
	if _, err := leader.agents.Register(ctx, connect.NewRequest(&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: "ghost", Models: []string{"m"}}})); err != nil {
		t.Fatal(err)
	}
	_, err := leader.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{AgentId: "ghost", Models: []string{"m"}, WaitMs: 10}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("lease for an agent outside gossip = %v, want unavailable", err)
	}
}

// TestLeaseWaitsForGossipToListANewAgent: a Lease from an agent gossip
// does not list yet waits, within its long poll, until gossip does (so a
// new agent is not sent into its error back-off), and then polls for a
// chunk as usual.
func TestLeaseWaitsForGossipToListANewAgent(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := leader.agents.Register(ctx, connect.NewRequest(&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: "late", Models: []string{"m"}}})); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := leader.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{AgentId: "late", Models: []string{"m"}, WaitMs: 30000}))
		done <- err
	}()
	pending := func(what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("%s: lease returned: %v", what, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
	pending("before gossip lists the agent")
	pool, err := gossip.Start(gossip.Config{
		Name: "late", BindAddr: "127.0.0.1:0", Label: leader.cfg.ClusterName,
		Meta: gossip.Meta{Role: gossip.RoleAgent},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Leave(time.Second)
	if _, err := pool.Join([]string{leader.pool.Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gossip listing the new agent", func() bool { _, ok := leader.pool.Member("late"); return ok })
	// Nothing is pending: the poll now waits for a chunk.
	pending("once listed, with no chunk to grant")
	cancel()
	if err := <-done; connect.CodeOf(err) != connect.CodeCanceled {
		t.Fatalf("cancelled lease: %v", err)
	}
}
