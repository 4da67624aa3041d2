package fsm

import (
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// crashRelease releases chunk 0's lease for an engine crash.
func crashRelease(token uint64, startedEnd int64, alone bool) *vbatchv1.ReleaseLease {
	return &vbatchv1.ReleaseLease{BatchId: batch, Chunk: 0, Token: token, Reason: ReleaseEngineCrash, StartedEnd: startedEnd, Alone: alone}
}

// isolation reads chunk 0's lease advice.
func isolation(h *Harness) (int64, uint32) { return Isolation(h.chunk(0)) }

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
