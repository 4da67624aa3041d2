package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// blockFrom makes the engine hold lines >= from until gate closes or the
// request's context ends.
func blockFrom(from int, gate <-chan struct{}) func(context.Context, int) (int, []byte, error) {
	return func(ctx context.Context, line int) (int, []byte, error) {
		if line >= from {
			select {
			case <-gate:
			case <-ctx.Done():
				return 0, nil, ctx.Err()
			}
		}
		return 200, okBody(line), nil
	}
}

func progressOf(f *fakeCoord) int64 {
	var p int64
	f.with(func() { p = f.progress })
	return p
}

func TestCancelledVerdictCommitsFinishedAndReleases(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	gate := make(chan struct{})
	var once sync.Once
	coord.renewHook = func(f *fakeCoord) vbatchv1.LeaseVerdict {
		if f.progress >= 150 {
			once.Do(func() { close(gate) })
			return vbatchv1.LeaseVerdict_LEASE_VERDICT_CANCELLED
		}
		return vbatchv1.LeaseVerdict_LEASE_VERDICT_OK
	}
	eng := newFakeEngine()
	// Lines 150..157 (the 8 in flight when the verdict comes) finish once
	// it is sent; later lines never do, so what is committed is exact.
	held, never := blockFrom(150, gate), blockFrom(158, make(chan struct{}))
	eng.do = func(ctx context.Context, line int) (int, []byte, error) {
		if line >= 158 {
			return never(ctx, line)
		}
		return held(ctx, line)
	}
	h := startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 50
		c.PartInterval = time.Minute
		c.DrainTimeout = 200 * time.Millisecond
	})
	waitFor(t, "release", func() bool { var n int; coord.with(func() { n = len(coord.releases) }); return n == 1 })
	noViolations(t, coord)
	coord.with(func() {
		if coord.releases[0] != reasonCancelled || coord.completes != 0 {
			t.Errorf("releases %v, completes %d", coord.releases, coord.completes)
		}
	})
	// The requests in flight when the verdict came finished and were
	// committed before the release.
	if p := progressOf(coord); p != 158 {
		t.Errorf("progress %d, want 158: the lines in flight at the verdict are committed, no others", p)
	}
	committedLines(t, coord)
	waitFor(t, "released metric", func() bool { return h.chunkOutcome(t, chunkReleased) == 1 })
}

func TestLastPartCompletesChunk(t *testing.T) {
	coord := newFakeCoord(t, inputLines(120))
	coord.completeWithPart = true
	h := startAgent(t, coord, newFakeEngine(), func(c *Config) { c.PartLines = 50; c.PartInterval = time.Minute })
	waitFor(t, "completed metric", func() bool { return h.chunkOutcome(t, chunkCompleted) == 1 })
	noViolations(t, coord)
	coord.with(func() {
		if len(coord.parts) != 3 || coord.partCompletes != 1 || coord.completes != 0 || len(coord.releases) != 0 {
			t.Errorf("parts %d, completed with a part %d, Complete calls %d, releases %v",
				len(coord.parts), coord.partCompletes, coord.completes, coord.releases)
		}
		for i, p := range coord.parts {
			if p.Complete != (i == len(coord.parts)-1) {
				t.Errorf("part %d [%d,%d): complete=%v", i, p.FromLine, p.ToLine, p.Complete)
			}
		}
	})
	committedLines(t, coord)
}

func TestRevokedVerdictStopsAtOnce(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	coord.renewHook = func(f *fakeCoord) vbatchv1.LeaseVerdict {
		if f.progress >= 150 {
			return vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED
		}
		return vbatchv1.LeaseVerdict_LEASE_VERDICT_OK
	}
	eng := newFakeEngine()
	eng.do = blockFrom(150, make(chan struct{})) // never opens
	h := startAgent(t, coord, eng, func(c *Config) { c.PartLines = 50; c.PartInterval = time.Minute })
	waitFor(t, "revoked metric", func() bool { return h.chunkOutcome(t, chunkRevoked) == 1 })
	noViolations(t, coord)
	coord.with(func() {
		if coord.progress != 150 || len(coord.releases) != 0 || coord.completes != 0 {
			t.Errorf("progress %d, releases %v, completes %d", coord.progress, coord.releases, coord.completes)
		}
	})
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if eng.cancelled != 8 {
		t.Errorf("%d in-flight requests cancelled, want 8", eng.cancelled)
	}
}

func TestStaleTokenOnPutResultsStopsChunk(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	coord.renewMs = 60_000 // no renewals: only the part answer tells the agent
	coord.putHook = func(f *fakeCoord, req *vbatchv1.PutResultsRequest) error {
		if req.FromLine == 100 {
			f.dead[req.Token] = true
			return connect.NewError(connect.CodeFailedPrecondition, errors.New("stale fencing token"))
		}
		return nil
	}
	eng := newFakeEngine()
	h := startAgent(t, coord, eng, func(c *Config) { c.PartInterval = time.Minute })
	waitFor(t, "revoked metric", func() bool { return h.chunkOutcome(t, chunkRevoked) == 1 })
	noViolations(t, coord)
	coord.with(func() {
		if coord.progress != 100 || len(coord.parts) != 1 || coord.putCalls != 2 || len(coord.releases) != 0 || coord.completes != 0 {
			t.Errorf("progress %d, parts %d, put calls %d, releases %v, completes %d",
				coord.progress, len(coord.parts), coord.putCalls, coord.releases, coord.completes)
		}
	})
}

func TestPartsCutEveryPartLines(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	startAgent(t, coord, newFakeEngine(), func(c *Config) { c.PartInterval = time.Minute })
	waitFor(t, "chunk completed", func() bool { var s string; coord.with(func() { s = coord.state }); return s == "done" })
	coord.with(func() {
		var got []string
		for _, p := range coord.parts {
			got = append(got, fmt.Sprintf("[%d,%d)", p.FromLine, p.ToLine))
		}
		if strings.Join(got, " ") != "[0,100) [100,200) [200,250)" {
			t.Errorf("parts %v", got)
		}
	})
}

func TestDrainReleasesHeldLease(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	eng := newFakeEngine()
	eng.do = blockFrom(150, make(chan struct{}))
	h := startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 50
		c.PartInterval = time.Minute
		c.DrainTimeout = 50 * time.Millisecond
	})
	waitFor(t, "progress 150", func() bool { return progressOf(coord) == 150 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.a.Drain(ctx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	noViolations(t, coord)
	coord.with(func() {
		if len(coord.releases) != 1 || coord.releases[0] != reasonDrain || coord.progress != 150 {
			t.Errorf("releases %v, progress %d", coord.releases, coord.progress)
		}
		if ag := coord.registered["agent-test"]; ag == nil || !ag.Draining {
			t.Errorf("agent not registered as draining: %+v", ag)
		}
	})
}

// TestEngineFailureReleasesLease: an engine that goes down with none of
// the lease's requests on it (they wait for it) and stays down past
// EngineFailureTimeout has the lease released as an engine failure, not
// counted as a crash.
func TestEngineFailureReleasesLease(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	eng := newFakeEngine()
	eng.do = func(_ context.Context, line int) (int, []byte, error) {
		if line == 99 {
			// Answered, then the engine goes down.
			eng.mu.Lock()
			eng.healthy = false
			eng.mu.Unlock()
		}
		return 200, okBody(line), nil
	}
	startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 50
		c.PartInterval = 10 * time.Millisecond
		c.EngineFailureTimeout = 100 * time.Millisecond
		// The lines waiting for the engine are given up at once, not
		// after a drain.
		c.DrainTimeout = time.Hour
	})
	waitFor(t, "release", func() bool { return len(releasesOf(coord)) == 1 })
	noViolations(t, coord)
	rel := releasesOf(coord)[0]
	if p := progressOf(coord); rel.Reason != reasonEngineFailure || rel.StartedEnd != 0 || p == 250 {
		t.Errorf("release %v at progress %d; want an engine failure without crash fields", rel, p)
	}
	committedLines(t, coord)
}

// TestEngineHungUnderRequestsIsACrash: an engine that goes down while the
// lease's requests are on it, and stays down (hung under them), ends the
// lease as a crash over the lines started, so a request that hangs the
// engine is isolated like one that crashes it.
func TestEngineHungUnderRequestsIsACrash(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	eng := newFakeEngine()
	eng.do = blockFrom(100, make(chan struct{}))
	startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 50
		c.PartInterval = time.Minute
		c.EngineFailureTimeout = 100 * time.Millisecond
		// The requests hung on the engine are given up at once, as under
		// a crash, not after a drain.
		c.DrainTimeout = time.Hour
	})
	waitFor(t, "progress 100", func() bool { return progressOf(coord) == 100 })
	eng.mu.Lock()
	eng.healthy = false
	eng.mu.Unlock()
	waitFor(t, "release", func() bool { return len(releasesOf(coord)) == 1 })
	noViolations(t, coord)
	rel := releasesOf(coord)[0]
	if rel.Reason != reasonEngineCrash || rel.Alone || rel.StartedEnd <= 100 || progressOf(coord) != 100 {
		t.Errorf("release %v at progress %d; want engine_crash over lines past 100", rel, progressOf(coord))
	}
}

func TestShutdownReleasesHeldLease(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	eng := newFakeEngine()
	eng.do = blockFrom(50, make(chan struct{}))
	h := startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 50
		c.PartInterval = time.Minute
		c.DrainTimeout = 50 * time.Millisecond
	})
	waitFor(t, "progress 50", func() bool { return progressOf(coord) == 50 })
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	noViolations(t, coord)
	coord.with(func() {
		if len(coord.releases) != 1 || coord.releases[0] != reasonShutdown {
			t.Errorf("releases %v", coord.releases)
		}
	})
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if !eng.started || !eng.stopped {
		t.Errorf("engine started %v stopped %v", eng.started, eng.stopped)
	}
}

// TestLostLeaseAnswerIsAskedForAgain: when a Lease call was granted but its
// answer never arrived, the agent's next call repeats the same attempt
// (same request id, retry set), so the coordinator can give it the lease
// it holds instead of leaving the chunk leased to nobody until its TTL.
func TestLostLeaseAnswerIsAskedForAgain(t *testing.T) {
	coord := newFakeCoord(t, inputLines(20))
	coord.loseGrants = 1
	startAgent(t, coord, newFakeEngine(), nil)
	waitFor(t, "chunk completed", func() bool { var n int; coord.with(func() { n = coord.completes }); return n == 1 })
	noViolations(t, coord)
	committedLines(t, coord)
	coord.with(func() {
		if coord.resumed != 1 {
			t.Fatalf("lease resumed %d times, want 1", coord.resumed)
		}
		if coord.token != 7 {
			t.Errorf("chunk granted anew (token %d): the lost grant was not the one run", coord.token)
		}
		// Every call of the granted attempt: the first, then the retry.
		var calls []*vbatchv1.LeaseRequest
		for _, r := range coord.leaseReqs {
			if r.RequestId == coord.grantReq {
				calls = append(calls, r)
			}
		}
		if coord.grantReq == "" || len(calls) != 2 || calls[0].Retry || !calls[1].Retry {
			t.Errorf("calls of the granted attempt %q: %v, want a first call and one retry", coord.grantReq, calls)
		}
	})
}

// TestPartsCutAtPartBytes: a part holds at most PartBytes of results
// (a single larger line alone), however many lines PartLines allows.
func TestPartsCutAtPartBytes(t *testing.T) {
	coord := newFakeCoord(t, inputLines(40))
	eng := newFakeEngine()
	eng.do = func(_ context.Context, line int) (int, []byte, error) {
		body := okBody(line)
		if line == 10 {
			// One answer larger than a part may hold.
			body = []byte(fmt.Sprintf(`{"id":"x","big":"%s"}`, strings.Repeat("y", 5000)))
		}
		return 200, body, nil
	}
	const limit = 2000
	startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 500
		c.PartInterval = time.Minute
		c.PartBytes = limit
	})
	waitFor(t, "chunk completed", func() bool {
		var n int
		coord.with(func() { n = coord.completes + coord.partCompletes })
		return n == 1
	})
	noViolations(t, coord)
	committedLines(t, coord)
	coord.with(func() {
		if len(coord.parts) < 3 {
			t.Fatalf("%d parts, want the 40 lines cut by bytes into several", len(coord.parts))
		}
		for _, p := range coord.parts {
			size := len(p.Output) + len(p.Errors)
			if size > limit && p.ToLine-p.FromLine != 1 {
				t.Errorf("part [%d,%d) holds %d bytes, over %d with more than one line", p.FromLine, p.ToLine, size, limit)
			}
			if p.FromLine <= 10 && p.ToLine > 10 && p.ToLine-p.FromLine != 1 {
				t.Errorf("the oversized line 10 shares part [%d,%d)", p.FromLine, p.ToLine)
			}
		}
	})
}

// TestPartRetriedForAtMostATTL: a part the coordinators keep refusing
// with a retryable error, while renewals succeed, is given up after one
// lease TTL and the lease released, rather than held (and any drain
// blocked) for ever.
func TestPartRetriedForAtMostATTL(t *testing.T) {
	coord := newFakeCoord(t, inputLines(20))
	coord.putHook = func(*fakeCoord, *vbatchv1.PutResultsRequest) error {
		return connect.NewError(connect.CodeUnavailable, errors.New("no quorum for blobs"))
	}
	startAgent(t, coord, newFakeEngine(), nil)
	// The fake grants 2 s leases.
	start := time.Now()
	waitFor(t, "lease released", func() bool { var n int; coord.with(func() { n = len(coord.releases) }); return n > 0 })
	if el := time.Since(start); el > 8*time.Second {
		t.Errorf("released after %v, want about one TTL (2 s)", el)
	}
	coord.with(func() {
		if coord.releases[0] != reasonCommitFailure || coord.completes != 0 || coord.progress != 0 {
			t.Errorf("releases %v completes %d progress %d", coord.releases, coord.completes, coord.progress)
		}
	})
}

// TestFailedCommitAbandonsLinesInFlight: once a part failed to commit, the
// lease can commit nothing more, so the lines in flight are given up at
// once rather than run out a drain for nothing.
func TestFailedCommitAbandonsLinesInFlight(t *testing.T) {
	coord := newFakeCoord(t, inputLines(250))
	coord.putHook = func(*fakeCoord, *vbatchv1.PutResultsRequest) error {
		return connect.NewError(connect.CodeInternal, errors.New("disk on fire"))
	}
	eng := newFakeEngine()
	eng.do = blockFrom(50, make(chan struct{})) // never opens
	startAgent(t, coord, eng, func(c *Config) {
		c.PartLines = 50
		c.PartInterval = time.Minute
		c.DrainTimeout = time.Hour
	})
	waitFor(t, "release", func() bool { return len(releasesOf(coord)) == 1 })
	noViolations(t, coord)
	if rel, p := releasesOf(coord)[0], progressOf(coord); rel.Reason != reasonCommitFailure || p != 0 {
		t.Errorf("release %v at progress %d; want a commit failure at 0", rel, p)
	}
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if eng.cancelled == 0 {
		t.Error("no request in flight was cancelled")
	}
}
