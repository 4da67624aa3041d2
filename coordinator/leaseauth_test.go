package coordinator

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestLeaseCallsWaitForTheirGrant: Renew, Complete and Release with a
// token (the raft index of the lease's grant) this node has not applied
// yet wait for it instead of being authorized against state that does not
// know the lease; past the caller's deadline they answer Unavailable, so
// the agent retries, possibly on another coordinator.
func TestLeaseCallsWaitForTheirGrant(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	s := leader.agents
	calls := map[string]func(ctx context.Context, token uint64) error{
		"renew": func(ctx context.Context, token uint64) error {
			_, err := s.Renew(ctx, connect.NewRequest(&vbatchv1.RenewRequest{BatchId: "batch-x", Token: token}))
			return err
		},
		"complete": func(ctx context.Context, token uint64) error {
			_, err := s.Complete(ctx, connect.NewRequest(&vbatchv1.CompleteRequest{BatchId: "batch-x", Token: token}))
			return err
		},
		"release": func(ctx context.Context, token uint64) error {
			_, err := s.Release(ctx, connect.NewRequest(&vbatchv1.ReleaseRequest{BatchId: "batch-x", Token: token}))
			return err
		},
	}
	for name, call := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := call(ctx, leader.fsm.AppliedIndex()+1_000_000)
		cancel()
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("%s with a token beyond the applied index: %v, want Unavailable", name, err)
		}
	}

	// A call whose grant is applied while it waits goes on: here to the
	// fencing checks, which find no such chunk.
	for name, call := range calls {
		token := leader.fsm.AppliedIndex() + 1
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- call(ctx, token)
		}()
		if _, err := s.Register(context.Background(), connect.NewRequest(&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: "agent-" + name}})); err != nil {
			t.Fatal(err)
		}
		if err := <-done; connect.CodeOf(err) == connect.CodeUnavailable {
			t.Errorf("%s once its token is applied: %v", name, err)
		}
	}
}
