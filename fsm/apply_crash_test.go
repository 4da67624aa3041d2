package fsm

import (
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// crashRelease releases chunk 0's lease for an engine crash.
func crashRelease(token uint64, startedEnd int64, alone bool) *vbatchv1.ReleaseLease {
	return &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 0, Token: token, Reason: ReleaseEngineCrash, StartedEnd: startedEnd, Alone: alone}
}

// isolation reads chunk 0's lease advice for an agent that is the only
// one serving the model.
func isolation(h *Harness) (int64, uint32) { return Isolation(h.chunk(0), "a1", false) }

// TestCrashCounting walks a chunk with a request that crashes the engine:
// two crashes among the same started lines isolate them, progress through
// the isolated lines keeps the advice for the rest of the window, and crashes
// of the head line alone count until progress moves.
func TestCrashCounting(t *testing.T) {
	h := running(t, 20, 20)

	// First crash: lines [0,8) were started, [0,3) finished and committed.
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 3, 3))
	h.MustApply(t, crashRelease(tok, 8, false))
	if c := h.chunk(0); c.Crashes != 1 || c.CrashWindowEnd != 8 || c.State != chunkPending || c.Progress != 3 {
		t.Fatalf("after one crash: %v", c)
	}
	if until, _ := isolation(h); until != 0 {
		t.Fatalf("one crash isolates up to %d, want no isolation yet", until)
	}

	// Second crash in the same window, with more lines started.
	tok = grant(t, h, 0, "a2")
	h.MustApply(t, commit(0, tok, 3, 5, 2))
	h.MustApply(t, crashRelease(tok, 11, false))
	if until, head := isolation(h); until != 11 || head != 0 {
		t.Fatalf("after two crashes: isolate until %d, head crashes %d; want 11, 0", until, head)
	}

	// The isolated run passes two lines, then the engine dies under line 7
	// alone.
	tok = grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 5, 7, 2))
	h.MustApply(t, crashRelease(tok, 8, true))
	if until, head := isolation(h); until != 11 || head != 1 {
		t.Fatalf("after a crash alone: isolate until %d, head crashes %d; want 11, 1", until, head)
	}

	// The next lease fails line 7 (an error line) and moves on: the head
	// count restarts; the window stays isolated until progress passes it.
	tok = grant(t, h, 0, "a2")
	h.MustApply(t, commit(0, tok, 7, 8, 0))
	if until, head := isolation(h); until != 11 || head != 0 {
		t.Fatalf("after failing the head line: isolate until %d, head crashes %d; want 11, 0", until, head)
	}
	h.MustApply(t, commit(0, tok, 8, 11, 3))
	if c := h.chunk(0); c.Crashes != 0 || c.CrashWindowEnd != 0 {
		t.Fatalf("progress past the window kept its crashes: %v", c)
	}
	if until, head := isolation(h); until != 0 || head != 0 {
		t.Fatalf("past the window: isolate until %d, head crashes %d", until, head)
	}
}

// TestCrashReleaseWithoutFields checks that a crash release from a cluster
// below LevelCrashCounts (no started lines, not alone) and a release for
// another reason count nothing, and that a window never reaches past the
// chunk.
func TestCrashReleaseWithoutFields(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, crashRelease(tok, 0, false))
	tok = grant(t, h, 0, "a1")
	h.MustApply(t, &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 0, Token: tok, Reason: "drain", StartedEnd: 5})
	if c := h.chunk(0); c.Crashes != 0 || c.HeadCrashes != 0 || c.CrashWindowEnd != 0 {
		t.Fatalf("releases without crash fields counted: %v", c)
	}
	tok = grant(t, h, 0, "a1")
	h.MustApply(t, crashRelease(tok, 99, false))
	if c := h.chunk(0); c.Crashes != 1 || c.CrashWindowEnd != 10 {
		t.Fatalf("window past the chunk's end: %v", c)
	}
	// A stale crash release is refused and counts nothing.
	refused(t, h, ErrStaleToken, crashRelease(tok, 5, false))
}

// TestHeadCrashesCountPerAgent: where other agents serve the model, the
// head line's crashes count once per distinct agent other than the one
// asking, so one failing engine cannot condemn a line alone, and that
// agent is kept from the chunk until another has run the line.
func TestHeadCrashesCountPerAgent(t *testing.T) {
	h := running(t, 20, 20)
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a2"}})
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a3"}})
	crashAlone := func(agent string) {
		t.Helper()
		tok := grant(t, h, 0, agent)
		h.MustApply(t, crashRelease(tok, 1, true))
	}
	crashAlone("a1")
	crashAlone("a1") // a1's engine again: one distinct agent
	ch := h.chunk(0)
	if ch.HeadCrashes != 2 || len(ch.HeadCrashAgents) != 1 || ch.HeadCrashAgents[0] != "a1" {
		t.Fatalf("after two crashes on a1: %v", ch)
	}
	for _, tc := range []struct {
		agent       string
		othersServe bool
		want        uint32
		avoid       bool
	}{
		{"a1", true, 0, true},   // its own crashes do not count for it
		{"a2", true, 1, false},  // one other agent crashed: a2's crash would be the second
		{"a1", false, 2, false}, // the only agent serving: every crash counts
	} {
		until, got := Isolation(ch, tc.agent, tc.othersServe)
		if got != tc.want || until != 1 || AvoidFor(ch, tc.agent, tc.othersServe) != tc.avoid {
			t.Errorf("%s (others serve %v): head crashes %d, isolate until %d, avoid %v; want %d, 1, %v",
				tc.agent, tc.othersServe, got, until, AvoidFor(ch, tc.agent, tc.othersServe), tc.want, tc.avoid)
		}
	}
	crashAlone("a2")
	ch = h.chunk(0)
	if _, got := Isolation(ch, "a3", true); got != 2 {
		t.Fatalf("two agents crashed: a3 counts %d, want 2 (fail without running)", got)
	}
	if _, got := Isolation(ch, "a1", true); got != 1 || AvoidFor(ch, "a1", true) {
		t.Fatalf("a1 after a2 crashed too: counts %d, avoided %v; want 1, not avoided", got, AvoidFor(ch, "a1", true))
	}
	// Progress past the head line forgets both counts.
	tok := grant(t, h, 0, "a3")
	h.MustApply(t, commit(0, tok, 0, 1, 0))
	if ch := h.chunk(0); ch.HeadCrashes != 0 || len(ch.HeadCrashAgents) != 0 {
		t.Fatalf("after progress: %v", ch)
	}
}
