package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// fakeClocks drives a leaderClock: mono is its monotonic clock, wall the
// coordinator's, each moved by the test.
type fakeClocks struct {
	mu         sync.Mutex
	mono, wall time.Time
}

func (f *fakeClocks) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mono, f.wall = f.mono.Add(d), f.wall.Add(d)
}

func (f *fakeClocks) step(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wall = f.wall.Add(d)
}

func (f *fakeClocks) monoNow() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mono
}

func (f *fakeClocks) wallNow() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wall
}

func TestLeaderClockGate(t *testing.T) {
	clocks := &fakeClocks{mono: time.Unix(1000, 0), wall: time.Unix(1_800_000_000, 0)}
	lc := newLeaderClock()
	lc.mono = clocks.monoNow
	term := atomic.Uint64{}
	term.Store(7)

	// Shut: a leader's own decisions fail at once; others wait.
	if _, err := lc.admit(nil, term.Load, clocks.wallNow, false); !errors.Is(err, errLeasesNotExtended) {
		t.Fatalf("fail-fast admit before the extension: %v", err)
	}
	admitted := make(chan time.Time, 1)
	go func() {
		at, err := lc.admit(nil, term.Load, clocks.wallNow, true)
		if err != nil {
			t.Errorf("waiting admit: %v", err)
		}
		admitted <- at
	}()
	select {
	case <-admitted:
		t.Fatal("a command passed before the leases were extended")
	case <-time.After(20 * time.Millisecond):
	}
	lc.openFor(7, clocks.wallNow(), clocks.monoNow())
	if at := <-admitted; !at.Equal(clocks.wallNow()) {
		t.Fatalf("admitted with stamp %v, want the wall clock %v", at, clocks.wallNow())
	}

	// Time passing on both clocks is no step; a backward step only moves
	// the anchor.
	clocks.advance(time.Hour)
	if ok, _ := lc.check(7, clocks.wallNow()); !ok {
		t.Fatal("an hour on both clocks counted as a step")
	}
	clocks.step(-time.Minute)
	if ok, step := lc.check(7, clocks.wallNow()); !ok || step > -time.Minute+time.Second {
		t.Fatalf("backward step: ok %v step %v, want open and about -1m", ok, step)
	}
	clocks.advance(time.Second / 2)
	if ok, _ := lc.check(7, clocks.wallNow()); !ok {
		t.Fatal("after a backward step the clock was not re-anchored")
	}

	// A forward step seen by a command shuts the gate and wakes the loop.
	before := clocks.wallNow()
	clocks.step(time.Minute)
	if _, err := lc.admit(nil, term.Load, clocks.wallNow, false); !errors.Is(err, errLeasesNotExtended) {
		t.Fatalf("admit after a forward step: %v", err)
	}
	select {
	case <-lc.stepped:
	default:
		t.Fatal("the leader loop was not woken by the step")
	}
	if ref := lc.stepReference(); !ref.Equal(before) {
		t.Fatalf("step reference %v, want the unstepped time %v", ref, before)
	}
	lc.openFor(7, clocks.wallNow(), clocks.monoNow())
	if _, err := lc.admit(nil, term.Load, clocks.wallNow, false); err != nil {
		t.Fatalf("admit once extended on the new clock: %v", err)
	}

	// The anchor is the instant the extension was proposed: a commit that
	// took longer than the step threshold is no step.
	proposed, proposedMono := clocks.wallNow(), clocks.monoNow()
	clocks.advance(3 * time.Second)
	lc.openFor(7, proposed, proposedMono)
	if _, err := lc.admit(nil, term.Load, clocks.wallNow, false); err != nil {
		t.Fatalf("admit after an extension that took 3 s to commit: %v", err)
	}

	// A new term is shut until its own extension.
	term.Store(8)
	if _, err := lc.admit(nil, term.Load, clocks.wallNow, false); !errors.Is(err, errLeasesNotExtended) {
		t.Fatalf("admit in a new term before its extension: %v", err)
	}
}

// TestLeaderAheadNeverRevokesRenewals: agents keep renewing through a
// follower while leadership moves to a coordinator whose clock runs ten
// minutes ahead. Before the leader clock's gate, the new leader's first
// command (a barrier, a forwarded write) moved the FSM's time ten minutes
// on before its ExtendLeases committed, and renewals in that window were
// answered REVOKED.
func TestLeaderAheadNeverRevokesRenewals(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) {
		if c.NodeID == "c3" {
			c.clockOffset = 10 * time.Minute
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c1, c2, c3 := nodes[0], nodes[1], nodes[2]
	leader := waitLeader(t, nodes)
	if leader == c3 {
		if _, err := leader.TransferLeadership(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "c1 to lead", func() bool { return c1.IsLeader() })
		leader = c1
	}
	fakeOnlineAgent(t, leader, "a1", 200)
	var leases []*vbatchv1.LeaseResponse
	for i := range 10 {
		id := "file-" + string(rune('a'+i))
		createInputFile(t, ctx, leader, id, 0)
		createBatch(t, ctx, leader, "batch_"+id, id)
		r, err := leader.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{
			AgentId: "a1", Models: []string{"m"}, WaitMs: 10_000, RequestId: "att-" + id,
		}))
		if err != nil || !r.Msg.Granted {
			t.Fatalf("lease: %v %v", r, err)
		}
		leases = append(leases, r.Msg)
	}
	var revoked atomic.Int64
	var renewals atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, l := range leases {
		wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				rr, err := c2.agents.Renew(ctx, connect.NewRequest(&vbatchv1.RenewRequest{BatchId: l.BatchId, Chunk: l.Chunk, Token: l.Token}))
				if err == nil {
					renewals.Add(1)
					if rr.Msg.Verdict == vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED {
						revoked.Add(1)
						return
					}
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
	}
	if _, err := leader.TransferLeadership(ctx, "c3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "c3 to lead and extend the leases on its clock", func() bool {
		if !c3.IsLeader() {
			return false
		}
		extended := true
		c3.fsm.View(func(s *fsm.State) {
			for _, l := range leases {
				ch := s.Batches[l.BatchId].Chunks[l.Chunk]
				extended = extended && ch.Lease != nil && time.UnixMilli(ch.Lease.ExpiresAt).After(time.Now().Add(5*time.Minute))
			}
		})
		return extended
	})
	// Renewals go on past the takeover.
	after := renewals.Load()
	waitFor(t, 10*time.Second, "renewals after the takeover", func() bool { return renewals.Load() > after+int64(2*len(leases)) })
	close(stop)
	wg.Wait()
	if n := revoked.Load(); n > 0 {
		t.Fatalf("%d of %d live leases were revoked to agents renewing as a leader ten minutes ahead took over", n, len(leases))
	}
}

// TestLeaderClockStepKeepsLeases: the leader's wall clock steps a minute
// forward mid-term (an NTP step, a VM resumed). Its leases, renewed on the
// old clock, are extended on the new one instead of expired under their
// live agent, and the agent's next renewal is accepted.
func TestLeaderClockStepKeepsLeases(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fakeOnlineAgent(t, leader, "a1", 200)
	createInputFile(t, ctx, leader, "file-1", 0)
	createBatch(t, ctx, leader, "batch_1", "file-1")
	r, err := leader.agents.Lease(ctx, connect.NewRequest(&vbatchv1.LeaseRequest{
		AgentId: "a1", Models: []string{"m"}, WaitMs: 10_000, RequestId: "att-1",
	}))
	if err != nil || !r.Msg.Granted {
		t.Fatalf("lease: %v %v", r, err)
	}
	l := r.Msg
	leader.clockStep.Store(int64(time.Minute))
	waitFor(t, 10*time.Second, "the lease extended on the stepped clock", func() bool {
		var token uint64
		var ends int64
		leader.fsm.View(func(s *fsm.State) {
			if lease := s.Batches[l.BatchId].Chunks[l.Chunk].Lease; lease != nil {
				token, ends = lease.Token, lease.ExpiresAt
			}
		})
		if token != l.Token {
			t.Fatalf("the clock step ended the live lease %d (token now %d)", l.Token, token)
		}
		return time.UnixMilli(ends).After(time.Now().Add(time.Minute))
	})
	rr, err := leader.agents.Renew(ctx, connect.NewRequest(&vbatchv1.RenewRequest{BatchId: l.BatchId, Chunk: l.Chunk, Token: l.Token}))
	if err != nil || rr.Msg.Verdict != vbatchv1.LeaseVerdict_LEASE_VERDICT_OK {
		t.Fatalf("renewal after the step: %v %v", rr, err)
	}
}

// TestSlowCommitsAreNoClockStep: a leader whose commits take longer than
// the clock-step threshold (a slow disk) still opens its gate and serves
// writes; its extension's latency is not taken for a step of its clock.
func TestSlowCommitsAreNoClockStep(t *testing.T) {
	cfg := nodeConfig(t, "slow", 1, nil)
	cfg.fsmApplyDelay = 1200 * time.Millisecond
	c := startNode(t, cfg)
	waitLeader(t, []*Coordinator{c})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 2 {
		if _, err := c.Apply(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: fmt.Sprintf("a%d", i)}}); err != nil {
			t.Fatalf("write %d on a leader with 1.2 s commits: %v", i, err)
		}
	}
}
