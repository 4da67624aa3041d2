package coordinator

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestLeasesIgnoreAProposersSkewedClock: coordinators whose clocks are ten
// minutes off the leader's, far more than the lease TTL, still grant and
// renew leases, and those leases end a TTL after the leader's time. (Before
// FSM level 8 a follower behind by more than a TTL proposed leases that
// had already ended and could grant none.)
func TestLeasesIgnoreAProposersSkewedClock(t *testing.T) {
	offsets := map[string]time.Duration{"c2": -10 * time.Minute, "c3": 10 * time.Minute}
	nodes := startCluster(t, 3, func(c *Config) { c.clockOffset = offsets[c.NodeID] })
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fakeOnlineAgent(t, leader, "a1", 200)
	for _, c := range nodes {
		if c == leader {
			continue
		}
		batchID := "batch_" + c.cfg.NodeID
		createInputFile(t, ctx, c, "file-"+c.cfg.NodeID, 0)
		createBatch(t, ctx, c, batchID, "file-"+c.cfg.NodeID)
		r, err := c.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{
			AgentId: "a1", Models: []string{"m"}, WaitMs: 10_000, RequestId: "att-" + c.cfg.NodeID,
		}))
		if err != nil || !r.Msg.Granted {
			t.Fatalf("lease through %s (clock %v off the leader's): %v %v", c.cfg.NodeID, c.cfg.clockOffset-leader.cfg.clockOffset, r, err)
		}
		lease := r.Msg
		checkEnd := func(what string) {
			t.Helper()
			var end int64
			consistentView(t, ctx, leader, func(s *fsm.State) {
				if l := s.Batches[lease.BatchId].Chunks[lease.Chunk].Lease; l != nil {
					end = l.ExpiresAt
				}
			})
			want := leader.Now().Add(leader.cfg.LeaseTTL)
			if d := time.UnixMilli(end).Sub(want); d > time.Second || d < -10*time.Second {
				t.Errorf("%s through %s: lease ends %v from the leader's now + TTL", what, c.cfg.NodeID, d)
			}
		}
		checkEnd("grant")
		rr, err := c.agents.Renew(ctx, connect.NewRequest(&vbatchv1.RenewRequest{BatchId: lease.BatchId, Chunk: lease.Chunk, Token: lease.Token}))
		if err != nil || rr.Msg.Verdict != vbatchv1.LeaseVerdict_LEASE_VERDICT_OK {
			t.Fatalf("renew through %s: %v %v", c.cfg.NodeID, rr, err)
		}
		checkEnd("renewal")
	}
}
