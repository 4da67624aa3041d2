package agent

import (
	"context"
	"testing"
	"time"
)

// stopRecorder is a fake engine that records the deadline Stop was given.
type stopRecorder struct {
	*fakeEngine
	stopCalled   chan time.Time // when Stop ran
	stopDeadline chan time.Time // the deadline of Stop's context
}

func (e *stopRecorder) Stop(ctx context.Context) error {
	d, _ := ctx.Deadline()
	e.stopCalled <- time.Now()
	e.stopDeadline <- d
	return e.fakeEngine.Stop(ctx)
}

// TestShutdownKeepsItsBudget checks that a drain that cannot finish (a
// request that never returns, with a drain timeout far beyond the shutdown
// budget) leaves the engine its share of the budget, and that the engine
// must be stopped by the end of ShutdownTimeout counted from the signal:
// the service manager kills the agent soon after.
func TestShutdownKeepsItsBudget(t *testing.T) {
	coord := newFakeCoord(t, inputLines(20))
	fe := newFakeEngine()
	fe.do = func(ctx context.Context, line int) (int, []byte, error) {
		<-ctx.Done() // hangs until the agent gives the request up
		return 0, nil, ctx.Err()
	}
	eng := &stopRecorder{fakeEngine: fe, stopCalled: make(chan time.Time, 1), stopDeadline: make(chan time.Time, 1)}
	const budget = 3 * time.Second
	cfg := testConfig(t, coord, "agent-shutdown")
	cfg.DrainTimeout = time.Hour
	cfg.ShutdownTimeout = budget
	a := New(cfg, eng, fakeGPUs{}, nil)
	stop := runAgent(t, a)
	waitFor(t, "a request in flight", func() bool { return fe.attemptsOf(0) > 0 })

	signalled := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	returned := time.Since(signalled)
	called, deadline := <-eng.stopCalled, <-eng.stopDeadline
	if deadline.IsZero() || deadline.After(signalled.Add(budget+200*time.Millisecond)) {
		t.Errorf("engine stop deadline %v after the signal, want within the %v budget", deadline.Sub(signalled), budget)
	}
	if left := deadline.Sub(called); left < shutdownReserve(budget)/2 {
		t.Errorf("engine stop got %v of the budget, want about the reserve %v", left, shutdownReserve(budget))
	}
	if returned > budget+2*time.Second {
		t.Errorf("Run returned %v after the signal, budget %v", returned, budget)
	}
	// The lease's calls were cut off with the budget, yet it was handed
	// back rather than left to run out its TTL.
	coord.with(func() {
		if len(coord.releases) != 1 || coord.releases[0] != reasonShutdown {
			t.Errorf("releases %v, want one %q", coord.releases, reasonShutdown)
		}
	})
}
