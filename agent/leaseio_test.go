package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func budgetUsed(b *byteBudget) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// acquireBlocks checks that taking n bytes from b waits: the attempt,
// bounded by a short deadline, must end with it.
func acquireBlocks(t *testing.T, b *byteBudget, n int64) {
	t.Helper()
	before := budgetUsed(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.acquire(ctx, n); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire(%d) with %d of %d used: %v, want it to wait", n, before, b.limit, err)
	}
	if got := budgetUsed(b); got != before {
		t.Fatalf("a cancelled acquire changed the bytes used from %d to %d", before, got)
	}
}

// acquireNow checks that taking n bytes from b does not wait.
func acquireNow(t *testing.T, b *byteBudget, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.acquire(ctx, n); err != nil {
		t.Fatalf("acquire(%d): %v", n, err)
	}
}

func TestByteBudgetBoundsBytes(t *testing.T) {
	b := newByteBudget(100)
	acquireNow(t, b, 40)
	acquireNow(t, b, 60) // exactly full
	acquireBlocks(t, b, 1)
	b.release(40)
	acquireBlocks(t, b, 41)
	acquireNow(t, b, 40)
	if got := budgetUsed(b); got != 100 {
		t.Fatalf("used %d, want 100", got)
	}
}

func TestByteBudgetOversizedGoesAlone(t *testing.T) {
	b := newByteBudget(100)
	acquireNow(t, b, 500) // nothing queued: a line over the budget passes
	acquireBlocks(t, b, 1)
	b.release(500)
	acquireNow(t, b, 10)
	acquireBlocks(t, b, 500) // something is queued: it waits
	b.release(10)
	acquireNow(t, b, 500)
}

func TestByteBudgetReleaseWakesWaiter(t *testing.T) {
	b := newByteBudget(100)
	acquireNow(t, b, 80)
	done := make(chan error, 1)
	go func() { done <- b.acquire(context.Background(), 50) }()
	b.release(20) // still no room for 50: the waiter must go on waiting
	select {
	case err := <-done:
		t.Fatalf("acquire(50) with 60 of 100 used returned %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.release(50)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("release did not wake the waiting acquire")
	}
	if got := budgetUsed(b); got != 60 {
		t.Fatalf("used %d, want 60", got)
	}
}

func TestByteBudgetCancel(t *testing.T) {
	b := newByteBudget(10)
	acquireNow(t, b, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.acquire(ctx, 5) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("acquire did not return when its context was cancelled")
	}
	if got := budgetUsed(b); got != 10 {
		t.Fatalf("used %d, want 10", got)
	}
}

// allRanOnce checks that every input line reached the engine exactly once
// and was committed exactly once.
func allRanOnce(t *testing.T, coord *fakeCoord, eng *fakeEngine, n int) {
	t.Helper()
	noViolations(t, coord)
	outputs, errs := committedLines(t, coord)
	if len(outputs) != n || len(errs) != 0 {
		t.Errorf("%d output and %d error lines, want %d and 0", len(outputs), len(errs), n)
	}
	for i := range n {
		if got := eng.attemptsOf(i); got != 1 {
			t.Errorf("line %d ran %d times", i, got)
		}
	}
}

func chunkDone(coord *fakeCoord) func() bool {
	return func() bool { var s string; coord.with(func() { s = coord.state }); return s == "done" }
}

// TestInputStreamIdleMovesToAnotherCoordinator: the coordinator serving the
// input stream sends 100 lines and then nothing, without ending the stream
// (stopped, or cut off by a network that drops packets). The agent gives up
// on it after the idle timeout and reads the rest from the other one.
func TestInputStreamIdleMovesToAnotherCoordinator(t *testing.T) {
	const n = 250
	coord := newFakeCoord(t, inputLines(n))
	coord.inputHook = func(f *fakeCoord, server string, from int64) int64 {
		if f.reads[0] == server+"@0" { // the server of the first stream hangs
			return max(from, 100)
		}
		return n
	}
	a1, a2 := coord.serveAs(t, "c1"), coord.serveAs(t, "c2")
	eng := newFakeEngine()
	startAgent(t, coord, eng, func(c *Config) {
		c.Coordinators = func() []string { return []string{a1, a2} }
		c.InputIdleTimeout = 200 * time.Millisecond
	})
	waitFor(t, "chunk completed", chunkDone(coord))
	allRanOnce(t, coord, eng, n)
	coord.with(func() {
		hung, _, _ := strings.Cut(coord.reads[0], "@")
		other := map[string]string{"c1": "c2", "c2": "c1"}[hung]
		if want := []string{hung + "@0", other + "@100"}; !slices.Equal(coord.reads, want) {
			t.Errorf("input streams %v, want %v: line 0 on the server that hung, then line 100 on the other", coord.reads, want)
		}
	})
}

// TestInputStreamsIdleEverywhereReleaseLease: when stream after stream
// brings nothing, the lease is released after readNoProgressMax of them
// rather than held forever.
func TestInputStreamsIdleEverywhereReleaseLease(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	coord.inputHook = func(_ *fakeCoord, _ string, from int64) int64 { return from }
	h := startAgent(t, coord, newFakeEngine(), func(c *Config) { c.InputIdleTimeout = 50 * time.Millisecond })
	waitFor(t, "released metric", func() bool { return h.chunkOutcome(t, chunkReleased) == 1 })
	noViolations(t, coord)
	coord.with(func() {
		if len(coord.releases) != 1 || coord.releases[0] != reasonInputFailure || len(coord.reads) != readNoProgressMax {
			t.Errorf("releases %v after input streams %v, want one %q after %d", coord.releases, coord.reads, reasonInputFailure, readNoProgressMax)
		}
	})
}

// TestInputBackpressureIsNotIdle: while the engine is busy the reader
// holds back (here on a small byte budget, or one smaller than a line)
// for longer than the idle timeout; that is not the coordinator's fault,
// so the stream is kept.
func TestInputBackpressureIsNotIdle(t *testing.T) {
	for _, budget := range []int64{1000, 1} {
		t.Run("", func(t *testing.T) {
			const n = 250
			const idle = 50 * time.Millisecond
			coord := newFakeCoord(t, inputLines(n))
			eng := newFakeEngine()
			gate := make(chan struct{})
			eng.do = blockFrom(0, gate)
			startAgent(t, coord, eng, func(c *Config) {
				c.InputIdleTimeout = idle
				c.InputBufferBytes = budget
			})
			waitFor(t, "8 lines in flight", func() bool {
				eng.mu.Lock()
				defer eng.mu.Unlock()
				return len(eng.attempts) == 8
			})
			// The reader is now held back by the budget; give the idle
			// timer, were it running, time to fire several times over.
			time.Sleep(6 * idle)
			close(gate)
			waitFor(t, "chunk completed", chunkDone(coord))
			allRanOnce(t, coord, eng, n)
			coord.with(func() {
				if !slices.Equal(coord.reads, []string{"@0"}) {
					t.Errorf("input streams %v, want the one from line 0", coord.reads)
				}
			})
		})
	}
}

func TestConfigInputBounds(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Join = []string{"10.0.0.1:8003"}
	if cfg.InputIdleTimeout != 30*time.Second || cfg.InputBufferBytes != 32<<20 {
		t.Errorf("input idle timeout %s, input buffer bytes %d", cfg.InputIdleTimeout, cfg.InputBufferBytes)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.InputIdleTimeout, cfg.InputBufferBytes = 0, -1
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "input idle timeout") || !strings.Contains(err.Error(), "input buffer bytes") {
		t.Errorf("zero input idle timeout and negative input buffer: %v", err)
	}
}
