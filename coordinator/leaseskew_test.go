package coordinator

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

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

// TestNewLeaderAheadKeepsLeases: a coordinator whose clock runs ten
// minutes ahead of the others takes over the leadership; the lease the
// previous leader granted (and would have renewed on its clock) is
// extended on the new leader's clock, not taken for one given up long ago
// and expired under its live agent.
func TestNewLeaderAheadKeepsLeases(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) {
		if c.NodeID == "c3" {
			c.clockOffset = 10 * time.Minute
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	byID := map[string]*Coordinator{}
	for _, c := range nodes {
		byID[c.cfg.NodeID] = c
	}
	leader := waitLeader(t, nodes)
	if leader.cfg.NodeID == "c3" {
		if _, err := leader.TransferLeadership(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "c1 to lead", func() bool { return byID["c1"].IsLeader() })
		leader = byID["c1"]
	}
	fakeOnlineAgent(t, leader, "a1", 200)
	createInputFile(t, ctx, leader, "file-1", 0)
	createBatch(t, ctx, leader, "batch_1", "file-1")
	r, err := leader.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{
		AgentId: "a1", Models: []string{"m"}, WaitMs: 10_000, RequestId: "att-1",
	}))
	if err != nil || !r.Msg.Granted {
		t.Fatalf("lease: %v %v", r, err)
	}
	lease := r.Msg

	if _, err := leader.TransferLeadership(ctx, "c3"); err != nil {
		t.Fatal(err)
	}
	c3 := byID["c3"]
	waitFor(t, 20*time.Second, "c3 to lead and extend the lease on its clock", func() bool {
		// A new leader's FSM may not yet hold the grant its predecessor
		// committed: judge once it does.
		if !c3.IsLeader() || c3.fsm.AppliedIndex() < lease.Token {
			return false
		}
		var l *vbatchv1.Lease
		c3.fsm.View(func(s *fsm.State) {
			if ch := s.Batches[lease.BatchId].Chunks[lease.Chunk]; ch.Lease != nil {
				l = proto.Clone(ch.Lease).(*vbatchv1.Lease)
			}
		})
		if l == nil || l.Token != lease.Token {
			t.Fatalf("the new leader ended the live lease %d: now %v", lease.Token, l)
		}
		return time.UnixMilli(l.ExpiresAt).After(time.Now().Add(5 * time.Minute))
	})
}
