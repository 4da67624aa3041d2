package coordinator

import (
	"context"
	"net"
	"testing"

	"connectrpc.com/connect"

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
