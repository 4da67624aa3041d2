package engine

import (
	"context"
	"sync"
	"sync/atomic"
)

// probeGate runs one health probe at a time after failed requests. A
// caller that fails while a probe runs waits for that probe's answer (or
// for its own ctx) instead of sending another to a server that is
// struggling already, so no failed request reads a health from before its
// failure.
type probeGate struct {
	mu   sync.Mutex
	done chan struct{} // closed when the running probe ends; nil when none runs
	// waiters counts callers waiting for the running probe.
	waiters atomic.Int32
}

// run runs probe unless one is running, in which case it waits for that
// one to end or for ctx.
func (g *probeGate) run(ctx context.Context, probe func()) {
	g.mu.Lock()
	if running := g.done; running != nil {
		g.mu.Unlock()
		g.waiters.Add(1)
		defer g.waiters.Add(-1)
		select {
		case <-running:
		case <-ctx.Done():
		}
		return
	}
	done := make(chan struct{})
	g.done = done
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.done = nil
		g.mu.Unlock()
		close(done)
	}()
	probe()
}
