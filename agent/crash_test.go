package agent

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// crashOn makes the fake engine die under line poison: the request loses
// its connection and the engine reports itself unhealthy, until revive
// (when set) brings it back after a moment, as a supervisor restarting it.
func crashOn(eng *fakeEngine, poison int, revive bool) func(context.Context, int) (int, []byte, error) {
	return func(ctx context.Context, line int) (int, []byte, error) {
		if line != poison {
			return 200, okBody(line), nil
		}
		eng.mu.Lock()
		eng.healthy = false
		eng.mu.Unlock()
		if revive {
			time.AfterFunc(30*time.Millisecond, func() {
				eng.mu.Lock()
				eng.healthy = true
				eng.mu.Unlock()
			})
		}
		return 0, nil, errors.New("read: connection reset by peer")
	}
}

// releasesOf returns the coordinator's Release requests.
func releasesOf(f *fakeCoord) []*vbatchv1.ReleaseRequest {
	var out []*vbatchv1.ReleaseRequest
	f.with(func() { out = append(out, f.releaseReqs...) })
	return out
}

// TestCrashReleasesWithStartedLines: the engine dying under a request ends
// the lease at once, with what finished in order committed and the lines
// started reported, so the coordinator can isolate them.
func TestCrashReleasesWithStartedLines(t *testing.T) {
	coord := newFakeCoord(t, inputLines(100))
	eng := newFakeEngine()
	eng.do = crashOn(eng, 40, false)
	h := startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 10
		c.PartInterval = time.Hour
		c.DrainTimeout = time.Hour // the crash must not wait for a drain
	})
	waitFor(t, "a release", func() bool { return len(releasesOf(coord)) == 1 })
	noViolations(t, coord)
	rel := releasesOf(coord)[0]
	if rel.Reason != reasonEngineCrash || rel.Alone || rel.StartedEnd <= 40 || rel.StartedEnd > 100 {
		t.Fatalf("release %v, want engine_crash with the started lines past 40, not alone", rel)
	}
	if p := progressOf(coord); p > 40 {
		t.Fatalf("progress %d past the line the engine died under", p)
	}
	committedLines(t, coord) // every committed line once, parts in order
	if got := counter(t, h.a.metrics.EngineCrashes); got < 1 {
		t.Fatalf("engine crashes counted %v", got)
	}
}

// TestIsolatedLinesRunAlone: the lines the coordinator asks to isolate run
// one at a time with nothing beside them; the rest of the chunk runs in
// parallel again; every line lands once.
func TestIsolatedLinesRunAlone(t *testing.T) {
	const n, isolateUntil = 60, 20
	coord := newFakeCoord(t, inputLines(n))
	coord.leaseHook = func(_ *fakeCoord, resp *vbatchv1.LeaseResponse) { resp.IsolateUntil = isolateUntil }
	eng := newFakeEngine()
	var running, isolatedRunning, overlaps, mostParallel atomic.Int64
	eng.do = func(ctx context.Context, line int) (int, []byte, error) {
		now := running.Add(1)
		defer running.Add(-1)
		if line < isolateUntil {
			isolatedRunning.Add(1)
			defer isolatedRunning.Add(-1)
			if now != 1 {
				overlaps.Add(1)
			}
		} else if isolatedRunning.Load() > 0 {
			overlaps.Add(1)
		}
		if m := mostParallel.Load(); now > m {
			mostParallel.CompareAndSwap(m, now)
		}
		time.Sleep(time.Millisecond)
		return 200, okBody(line), nil
	}
	startAgent(t, coord, eng, func(c *Config) { c.PartLines = 7 })
	waitFor(t, "every line committed", func() bool { return progressOf(coord) == n })
	noViolations(t, coord)
	outputs, errs := committedLines(t, coord)
	if len(outputs) != n || len(errs) != 0 {
		t.Fatalf("%d outputs, %d errors", len(outputs), len(errs))
	}
	if overlaps.Load() != 0 {
		t.Fatalf("%d times an isolated line ran beside another", overlaps.Load())
	}
	if mostParallel.Load() < 2 {
		t.Fatalf("the lines past the isolated ones never ran in parallel")
	}
}

// TestAloneCrashIsReportedAlone: the engine dying under an isolated line,
// with every earlier line committed, is reported as a crash alone.
func TestAloneCrashIsReportedAlone(t *testing.T) {
	coord := newFakeCoord(t, inputLines(50))
	coord.leaseHook = func(_ *fakeCoord, resp *vbatchv1.LeaseResponse) { resp.IsolateUntil = 20 }
	eng := newFakeEngine()
	eng.do = crashOn(eng, 5, false)
	startAgent(t, coord, eng, nil)
	waitFor(t, "a release", func() bool { return len(releasesOf(coord)) == 1 })
	noViolations(t, coord)
	rel := releasesOf(coord)[0]
	if rel.Reason != reasonEngineCrash || !rel.Alone || rel.StartedEnd != 6 || progressOf(coord) != 5 {
		t.Fatalf("release %v at progress %d; want engine_crash alone, started end 6, progress 5", rel, progressOf(coord))
	}
}

// TestHeadLineThatCrashesAloneAgainIsFailed: the line at progress crashed
// the engine alone once before; when it does so again it becomes an
// engine_crashed error line and the lease goes on once the engine is back.
// At the limit it is failed without being sent at all.
func TestHeadLineThatCrashesAloneAgainIsFailed(t *testing.T) {
	for _, tc := range []struct {
		name      string
		crashes   uint32
		wantCalls int
	}{
		{"one short of the limit", 1, 1},
		{"at the limit", 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 30
			coord := newFakeCoord(t, inputLines(n))
			coord.leaseHook = func(_ *fakeCoord, resp *vbatchv1.LeaseResponse) {
				resp.IsolateUntil, resp.HeadCrashes = 1, tc.crashes
			}
			eng := newFakeEngine()
			eng.do = crashOn(eng, 0, true)
			h := startAgent(t, coord, eng, nil)
			waitFor(t, "every line committed", func() bool { return progressOf(coord) == n })
			noViolations(t, coord)
			outputs, errs := committedLines(t, coord)
			if len(outputs) != n-1 || len(errs) != 1 {
				t.Fatalf("%d outputs, %d errors; want %d and 1", len(outputs), len(errs), n-1)
			}
			if l, ok := errs["req-0"]; !ok || l.Error == nil || l.Error.Code != errCodeEngineCrashed {
				t.Fatalf("error line of req-0: %+v", errs["req-0"])
			}
			if got := eng.attemptsOf(0); got != tc.wantCalls {
				t.Fatalf("line 0 sent %d times, want %d", got, tc.wantCalls)
			}
			if len(releasesOf(coord)) != 0 {
				t.Fatalf("released: %v", releasesOf(coord))
			}
			if got := counter(t, h.a.metrics.CrashingRequests); got != 1 {
				t.Fatalf("crashing requests counted %v", got)
			}
		})
	}
}

// TestRevokeEndsIsolatedLineWaitingForEngine: an isolated line waiting for
// the engine lock (an online request holds the engine) is given up the
// moment its lease is revoked; the lease ends at once instead of when the
// online request, up to its 10-minute timeout, lets go.
func TestRevokeEndsIsolatedLineWaitingForEngine(t *testing.T) {
	coord := newFakeCoord(t, inputLines(10))
	coord.state = "held" // no grant until the online request holds the engine
	coord.leaseHook = func(_ *fakeCoord, resp *vbatchv1.LeaseResponse) { resp.IsolateUntil = 10 }
	var revoke atomic.Bool
	coord.renewHook = func(*fakeCoord) vbatchv1.LeaseVerdict {
		if revoke.Load() {
			return vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED
		}
		return vbatchv1.LeaseVerdict_LEASE_VERDICT_OK
	}
	fe := newFakeEngine()
	eng, entered, release := heldEngine(fe)
	defer close(release)
	a, base := onlineAgent(t, coord, eng, func(c *Config) { c.DrainTimeout = time.Hour })

	go func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(`{"model":"test-model"}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	coord.with(func() { coord.state = "pending" })
	waitFor(t, "the isolated line to wait for the engine", func() bool { return exclusiveWaiting(a) })
	revoke.Store(true)
	waitFor(t, "the revoked lease to end", func() bool {
		return counter(t, a.metrics.ChunksProcessed.WithLabelValues(chunkRevoked)) == 1
	})
	if n := fe.attemptsOf(0); n != 0 {
		t.Fatalf("line 0 reached the engine %d times", n)
	}
	if exclusiveWaiting(a) {
		t.Fatal("the abandoned line still waits for the engine lock")
	}
}
