package coordinator

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestLostLeaseAnswerIsGivenAgain: a lease attempt whose grant the agent
// never heard of (the answer was lost) gets that same lease when it
// retries, on any coordinator, rather than the chunk waiting out its TTL;
// another attempt does not; and once the batch is being cancelled the
// retry hands the lease back so the cancel ends at once.
func TestLostLeaseAnswerIsGivenAgain(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	fol := follower(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fakeOnlineAgent(t, leader, "a1", 200)
	createInputFile(t, ctx, fol, "file-1", 0)
	createBatch(t, ctx, fol, "batch_1", "file-1")

	lease := func(c *Coordinator, id string, retry bool, wait time.Duration) *vbatchv1.LeaseResponse {
		t.Helper()
		r, err := c.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{
			AgentId: "a1", Models: []string{"m"}, WaitMs: wait.Milliseconds(), RequestId: id, Retry: retry,
		}))
		if err != nil {
			t.Fatalf("lease %s (retry %v) on %s: %v", id, retry, c.cfg.NodeID, err)
		}
		return r.Msg
	}
	first := lease(fol, "att-1", false, 10*time.Second)
	if !first.Granted {
		t.Fatal("no chunk granted")
	}
	consistentView(t, ctx, leader, func(s *fsm.State) {
		if got := s.Batches["batch_1"].Chunks[first.Chunk].Lease.GetRequestId(); got != "att-1" {
			t.Errorf("lease records attempt %q, want att-1", got)
		}
	})
	// The answer above is "lost": the agent retries the same attempt,
	// here through the leader.
	again := lease(leader, "att-1", true, 10*time.Second)
	if !again.Granted || again.Token != first.Token || again.BatchId != first.BatchId || again.Chunk != first.Chunk ||
		again.Progress != first.Progress || again.EndLine != first.EndLine {
		t.Fatalf("retried attempt got %v, want the lease first granted %v", again, first)
	}
	if got := testutil.ToFloat64(leader.metrics.LeasesResumed); got != 1 {
		t.Errorf("vbatch_leases_resumed_total = %v, want 1", got)
	}
	// A first call that repeats an id, or another attempt, gets nothing:
	// the only chunk is leased.
	if r := lease(leader, "att-1", false, 50*time.Millisecond); r.Granted {
		t.Fatalf("a first call was given a lease again: %v", r)
	}
	if r := lease(fol, "att-2", true, 50*time.Millisecond); r.Granted {
		t.Fatalf("another attempt was given the lease: %v", r)
	}

	// Cancelled while the agent still does not know its lease: the retry
	// releases it, and the batch is cancelled well before the lease's TTL.
	if _, err := fol.Apply(ctx, &vbatchv1.CancelBatch{BatchId: "batch_1", Project: "p"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if r := lease(fol, "att-1", true, 50*time.Millisecond); r.Granted {
		t.Fatalf("a lease on a cancelled batch was given: %v", r)
	}
	waitFor(t, 20*time.Second, "batch cancelled", func() bool {
		var st vbatchv1.BatchStatus
		leader.fsm.View(func(s *fsm.State) { st = s.Batches["batch_1"].Status })
		return st == vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED
	})
	if el := time.Since(start); el >= leader.cfg.LeaseTTL {
		t.Errorf("cancel took %v, not shorter than the lease TTL %v", el, leader.cfg.LeaseTTL)
	}
}

// TestLeaderDecisionsAreNotForwarded: a decision of the leader loop is
// applied on the node that made it only; once that node no longer leads,
// it is refused rather than forwarded to the new leader, which would apply
// it to a state it was not made from.
func TestLeaderDecisionsAreNotForwarded(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	fol := follower(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := fol.applyAsLeader(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "from-follower"}})
	if !errors.Is(err, errNotLeading) {
		t.Fatalf("leader decision on a follower: %v, want errNotLeading", err)
	}
	if _, err := leader.applyAsLeader(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "from-leader"}}); err != nil {
		t.Fatal(err)
	}
	consistentView(t, ctx, fol, func(s *fsm.State) {
		if _, ok := s.Agents["from-follower"]; ok {
			t.Error("the follower's decision was applied")
		}
		if _, ok := s.Agents["from-leader"]; !ok {
			t.Error("the leader's decision was not applied")
		}
	})
}
