package fsm

import (
	"testing"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestGrantLease(t *testing.T) {
	h := running(t, 20, 10)
	h.Advance(time.Second)
	tok := grant(t, h, 0, "a1")
	c := h.chunk(0)
	want := &vbatchv1.Lease{AgentId: "a1", Token: tok, GrantedAt: h.Clock.UnixMilli(), ExpiresAt: h.expiry()}
	if c.State != chunkLeased || c.Attempts != 1 || c.Lease.String() != want.String() {
		t.Fatalf("leased chunk = %v, want lease %v", c, want)
	}
	refused(t, h, ErrConflict, grantCmd(h, 0, "a2")) // live lease
	refused(t, h, ErrConflict, grantCmd(h, 0, "a1")) // even to its holder: one lease per chunk
	refused(t, h, ErrNotFound, grantCmd(h, 1, "ghost"))
	refused(t, h, ErrNotFound, grantCmd(h, 2, "a1"))
	refused(t, h, ErrNotFound, &vbatchv1.GrantLease{BatchId: "nope", AgentId: "a1", ExpiresAt: h.expiry()})
	refused(t, h, ErrInvalid, &vbatchv1.GrantLease{BatchId: batch, Chunk: 1, AgentId: "a1", ExpiresAt: h.Clock.UnixMilli()})
}

// A GrantLease entry applied twice (a raft log replayed onto a state that
// already holds it) is recognised by its token, the entry's own index.
func TestGrantLeaseReapplied(t *testing.T) {
	h := running(t, 20, 10)
	cmd := grantCmd(h, 0, "a1")
	tok := h.MustApply(t, cmd)
	before := h.State()
	res := MustApply(t, h.FSM, tok, h.Clock, cmd)
	if err := FromResult(res); err != nil {
		t.Fatalf("re-applied grant: %v", err)
	}
	if !before.Equal(h.State()) {
		t.Fatal("re-applied grant changed the state")
	}
}

func TestGrantLeaseAfterExpiry(t *testing.T) {
	h := running(t, 20, 10)
	old := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, old, 0, 4, 4))
	h.Advance(leaseTTL) // expired exactly now
	tok := grant(t, h, 0, "a2")
	c := h.chunk(0)
	if c.Lease.AgentId != "a2" || c.Lease.Token != tok || c.Attempts != 2 || c.Progress != 4 {
		t.Fatalf("re-granted chunk = %v", c)
	}
	refused(t, h, ErrStaleToken, commit(0, old, 4, 6, 2))
}

func TestGrantLeaseRefusedUnlessInProgress(t *testing.T) {
	h := validating(t, 10)
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1"}})
	refused(t, h, ErrNotFound, grantCmd(h, 0, "a1")) // no chunks yet

	h = running(t, 10, 5)
	runChunk(t, h, 0, 5)
	refused(t, h, ErrConflict, grantCmd(h, 0, "a2")) // done
	runChunk(t, h, 1, 5)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	refused(t, h, ErrConflict, grantCmd(h, 1, "a2"))
}

func TestRenewLease(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.Advance(20 * time.Second)
	h.MustApply(t, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, ExpiresAt: h.expiry()})
	if got := h.chunk(0).Lease.ExpiresAt; got != h.expiry() {
		t.Fatalf("expires_at = %d, want %d", got, h.expiry())
	}
	// A renewal never shortens a lease (a delayed, re-applied renewal).
	unchanged(t, h, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, ExpiresAt: h.Clock.UnixMilli() + 1})
	refused(t, h, ErrStaleToken, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok + 1, ExpiresAt: h.expiry()})
	refused(t, h, ErrStaleToken, &vbatchv1.RenewLease{BatchId: batch, Chunk: 1, Token: tok, ExpiresAt: h.expiry()})
	refused(t, h, ErrNotFound, &vbatchv1.RenewLease{BatchId: batch, Chunk: 9, Token: tok, ExpiresAt: h.expiry()})
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch})
	h.MustApply(t, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, ExpiresAt: h.expiry()}) // allowed while cancelling
	h.Advance(leaseTTL)
	refused(t, h, ErrStaleToken, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, ExpiresAt: h.expiry()}) // too late
}

// From level 8 a lease's end is the command's time plus ttl_ms: an
// absolute expires_at from a proposer whose clock is far off is ignored.
func TestLeaseTTLCountsFromTheCommandsTime(t *testing.T) {
	h := running(t, 20, 10)
	ttl := leaseTTL.Milliseconds()
	skewed := h.Clock.Add(-time.Hour).UnixMilli() // the proposer's clock is an hour behind
	tok := h.MustApply(t, &vbatchv1.GrantLease{BatchId: batch, Chunk: 0, AgentId: "a1", ExpiresAt: skewed, TtlMs: ttl})
	if got, want := h.chunk(0).Lease.ExpiresAt, h.Clock.UnixMilli()+ttl; got != want {
		t.Fatalf("granted lease expires at %d, want %d", got, want)
	}
	h.Advance(20 * time.Second)
	h.MustApply(t, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, ExpiresAt: skewed, TtlMs: ttl})
	if got, want := h.chunk(0).Lease.ExpiresAt, h.Clock.UnixMilli()+ttl; got != want {
		t.Fatalf("renewed lease expires at %d, want %d", got, want)
	}
	// A renewal never shortens a lease, whatever its TTL.
	unchanged(t, h, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, TtlMs: 1})
	refused(t, h, ErrInvalid, &vbatchv1.RenewLease{BatchId: batch, Chunk: 0, Token: tok, TtlMs: -1})
	refused(t, h, ErrInvalid, &vbatchv1.GrantLease{BatchId: batch, Chunk: 1, AgentId: "a1", TtlMs: maxLeaseTTLMs + 1})
	// Without ttl_ms (a cluster below level 8) the proposer's time decides.
	refused(t, h, ErrInvalid, &vbatchv1.GrantLease{BatchId: batch, Chunk: 1, AgentId: "a1", ExpiresAt: skewed})
}

func TestCommitPart(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 4, 3))
	h.MustApply(t, commit(0, tok, 4, 10, 6))
	b := h.batch(batch)
	c := b.Chunks[0]
	if c.Progress != 10 || len(c.Parts) != 2 || c.Parts[1].Token != tok || c.State != chunkLeased {
		t.Fatalf("chunk = %v", c)
	}
	if rc := b.RequestCounts; rc.Completed != 9 || rc.Failed != 1 || rc.Total != 20 {
		t.Fatalf("counts = %v", rc)
	}
	if u := b.Usage; u.InputTokens != 6 || u.OutputTokens != 8 || u.TotalTokens != 14 {
		t.Fatalf("usage = %v", u)
	}
	unchanged(t, h, commit(0, tok, 0, 4, 3)) // a retried commit
	unchanged(t, h, commit(0, tok, 4, 10, 6))
}

func TestCommitPartRefusals(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 4, 4))
	refused(t, h, ErrConflict, commit(0, tok, 5, 8, 3)) // gap
	refused(t, h, ErrConflict, commit(0, tok, 2, 8, 6)) // overlap
	refused(t, h, ErrInvalid, commit(0, tok, 4, 11, 7)) // past the chunk
	refused(t, h, ErrInvalid, commit(0, tok, 4, 4, 0))  // empty
	refused(t, h, ErrStaleToken, commit(0, tok+1, 4, 6, 2))
	refused(t, h, ErrStaleToken, commit(1, tok, 10, 12, 2)) // another chunk's token
	miscount := commit(0, tok, 4, 6, 2)
	miscount.Part.Failed = 1
	refused(t, h, ErrInvalid, miscount)
	negative := commit(0, tok, 4, 6, 3)
	refused(t, h, ErrInvalid, negative) // 3 succeeded, -1 failed
	refused(t, h, ErrInvalid, &vbatchv1.CommitPart{BatchId: batch, Chunk: 0})
	refused(t, h, ErrNotFound, &vbatchv1.CommitPart{BatchId: "nope", Part: &vbatchv1.Part{}})
	h.Advance(leaseTTL)
	refused(t, h, ErrStaleToken, commit(0, tok, 4, 6, 2)) // lease ran out
}

func TestCommitPartWhileCancelling(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch})
	h.MustApply(t, commit(0, tok, 0, 4, 4)) // work in flight when the cancel landed is kept
	if rc := h.batch(batch).RequestCounts; rc.Completed != 4 {
		t.Fatalf("counts = %v", rc)
	}
}

func TestCompleteChunk(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 6, 6))
	refused(t, h, ErrConflict, complete(0, tok)) // lines 6..10 not committed
	h.MustApply(t, commit(0, tok, 6, 10, 4))
	refused(t, h, ErrStaleToken, complete(0, tok+1))
	h.MustApply(t, complete(0, tok))
	c := h.chunk(0)
	if c.State != chunkDone || c.Lease.GetToken() != tok {
		t.Fatalf("done chunk = %v", c)
	}
	h.Advance(time.Hour)
	unchanged(t, h, complete(0, tok)) // re-applied, even after the lease time
	refused(t, h, ErrStaleToken, complete(0, tok+1))
	refused(t, h, ErrStaleToken, commit(0, tok+1, 10, 10, 0))
	refused(t, h, ErrNotFound, complete(5, tok))
}

func TestCompletePart(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 6, 6))
	refused(t, h, ErrInvalid, completing(commit(0, tok, 6, 8, 2))) // the part does not end the chunk
	refused(t, h, ErrInvalid, &vbatchv1.CompletePart{})
	last := completing(commit(0, tok, 6, 10, 3))
	h.MustApply(t, last)
	c := h.chunk(0)
	if c.State != chunkDone || c.Progress != 10 || c.Lease.GetToken() != tok || len(c.Parts) != 2 {
		t.Fatalf("chunk = %v", c)
	}
	if rc := h.batch(batch).RequestCounts; rc.Completed != 9 || rc.Failed != 1 {
		t.Fatalf("counts = %v", rc)
	}
	unchanged(t, h, last)             // a retried commit
	unchanged(t, h, complete(0, tok)) // an agent that also calls Complete
	h.Advance(time.Hour)
	unchanged(t, h, last) // re-applied after the lease time
	refused(t, h, ErrStaleToken, complete(0, tok+1))

	tok1 := grant(t, h, 1, "a1")
	h.Advance(leaseTTL)
	refused(t, h, ErrStaleToken, completing(commit(1, tok1, 10, 20, 10))) // the lease ran out
	if c := h.chunk(1); c.State == chunkDone {
		t.Fatalf("stale completion landed: %v", c)
	}
}

func TestReleaseLease(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 3, 3))
	refused(t, h, ErrStaleToken, &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 0, Token: tok + 1})
	h.MustApply(t, &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 0, Token: tok, Reason: "drain"})
	c := h.chunk(0)
	if c.State != chunkPending || c.Lease != nil || c.Progress != 3 {
		t.Fatalf("released chunk = %v", c)
	}
	refused(t, h, ErrStaleToken, &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 0, Token: tok})
	refused(t, h, ErrStaleToken, commit(0, tok, 3, 5, 2))
	// A done chunk keeps its finished lease, which cannot be released.
	runChunk(t, h, 1, 10)
	refused(t, h, ErrStaleToken, &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 1, Token: h.chunk(1).Lease.Token})
}

func TestExpireLeases(t *testing.T) {
	h := running(t, 30, 10)
	t0 := grant(t, h, 0, "a1")
	t1 := grant(t, h, 1, "a2")
	h.MustApply(t, &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 1, Token: t1})
	t1b := grant(t, h, 1, "a1")
	h.MustApply(t, &vbatchv1.ExpireLeases{Reason: "lease expired", Leases: []*vbatchv1.LeaseRef{
		{BatchId: batch, Chunk: 0, Token: t0},
		{BatchId: batch, Chunk: 1, Token: t1}, // stale: chunk 1 changed hands
		{BatchId: batch, Chunk: 7, Token: t0}, // no such chunk
		{BatchId: "gone", Chunk: 0, Token: t0},
	}})
	b := h.batch(batch)
	if c := b.Chunks[0]; c.State != chunkPending || c.Lease != nil {
		t.Fatalf("expired chunk = %v", c)
	}
	if c := b.Chunks[1]; c.State != chunkLeased || c.Lease.Token != t1b {
		t.Fatalf("stale ref ended the live lease: %v", c)
	}
	unchanged(t, h, &vbatchv1.ExpireLeases{Leases: []*vbatchv1.LeaseRef{{BatchId: batch, Chunk: 0, Token: t0}}})
}

func TestExtendLeases(t *testing.T) {
	h := running(t, 30, 10)
	t0 := grant(t, h, 0, "a1")
	h.Advance(20 * time.Second)
	t1 := grant(t, h, 1, "a2")
	far := h.Clock.Add(time.Hour).UnixMilli()
	h.Advance(15 * time.Second) // lease 0 has run out, nobody expired it yet
	target := h.Clock.Add(leaseTTL).UnixMilli()
	h.MustApply(t, &vbatchv1.ExtendLeases{ExpiresAt: target})
	if got := h.chunk(0).Lease.ExpiresAt; got != target {
		t.Fatalf("lease 0 expires at %d, want %d", got, target)
	}
	h.MustApply(t, &vbatchv1.RenewLease{BatchId: batch, Chunk: 1, Token: t1, ExpiresAt: far})
	h.MustApply(t, &vbatchv1.ExtendLeases{ExpiresAt: target}) // never shortens
	if got := h.chunk(1).Lease.ExpiresAt; got != far {
		t.Fatalf("lease 1 expires at %d, want %d", got, far)
	}
	h.MustApply(t, commit(0, t0, 0, 10, 10)) // the agent was not punished for the election
	if c := h.chunk(2); c.Lease != nil {
		t.Fatalf("extend leased a pending chunk: %v", c)
	}
}

// A grant records the agent's lease attempt, and GrantedTo finds the live
// lease of that attempt (and no other) while the batch runs or is being
// cancelled, so a lost Lease answer can be given again.
func TestGrantedToFindsTheAttemptsLiveLease(t *testing.T) {
	h := running(t, 20, 10)
	cmd := grantCmd(h, 1, "a1")
	cmd.RequestId = "att-1"
	tok := h.MustApply(t, cmd)
	if got := h.chunk(1).Lease.GetRequestId(); got != "att-1" {
		t.Fatalf("lease records attempt %q, want att-1", got)
	}
	grant(t, h, 0, "a1") // a grant from an older build: no attempt
	find := func(agent, id string) (uint32, uint64, bool) {
		_, ch, ok := GrantedTo(h.State(), agent, id)
		if !ok {
			return 0, 0, false
		}
		return ch.Index, ch.Lease.Token, true
	}
	if c, got, ok := find("a1", "att-1"); !ok || c != 1 || got != tok {
		t.Fatalf("GrantedTo(a1, att-1) = chunk %d token %d %v, want chunk 1 token %d", c, got, ok, tok)
	}
	for _, q := range [][2]string{{"a1", "att-2"}, {"a2", "att-1"}, {"a1", ""}} {
		if _, _, ok := find(q[0], q[1]); ok {
			t.Errorf("GrantedTo(%s, %q) found a lease", q[0], q[1])
		}
	}
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch, Project: proj})
	if _, _, ok := find("a1", "att-1"); !ok {
		t.Error("a lease on a batch being cancelled is not found")
	}
	h.Advance(leaseTTL)
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a3"}}) // the FSM's clock moves with commands
	if _, _, ok := find("a1", "att-1"); ok {
		t.Error("an expired lease is found")
	}
}

// A new leader leaves alone the leases that expired before gone_before:
// their agents have given them up, and extending them would strand their
// chunks for another TTL. Leases that expired since are still extended.
func TestExtendLeasesLeavesGoneLeases(t *testing.T) {
	h := running(t, 30, 10)
	grant(t, h, 0, "a1")
	h.Advance(20 * time.Second)
	grant(t, h, 1, "a2")
	h.Advance(40 * time.Second) // lease 0 ran out 30 s ago, lease 1 10 s ago
	gone, lease1 := h.chunk(0).Lease.ExpiresAt, h.chunk(1).Lease.ExpiresAt
	target := h.Clock.Add(leaseTTL).UnixMilli()
	h.MustApply(t, &vbatchv1.ExtendLeases{ExpiresAt: target, GoneBefore: h.Clock.Add(-15 * time.Second).UnixMilli()})
	if got := h.chunk(0).Lease.ExpiresAt; got != gone {
		t.Errorf("lease gone for 30 s expires at %d, want left at %d", got, gone)
	}
	if got := h.chunk(1).Lease.ExpiresAt; got != target || got == lease1 {
		t.Errorf("lease expired 10 s ago expires at %d, want extended to %d", got, target)
	}
}

// TestGrantLeaseWithinWindow: from level 7 a grant is refused once the
// batch's window has ended at the leader's time, whatever the clock of the
// coordinator that proposed it; below it the grant is judged as before.
func TestGrantLeaseWithinWindow(t *testing.T) {
	h := running(t, 20, 10)
	inside := grantCmd(h, 0, "a1")
	inside.WithinWindow = true
	h.MustApply(t, inside)

	h.Advance(24 * time.Hour)
	late := grantCmd(h, 1, "a1")
	late.WithinWindow = true
	refused(t, h, ErrConflict, late)
	late.WithinWindow = false
	h.MustApply(t, late)
}
