package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbatch/vbatch/sim"
)

// Sim is an engine backed by the built-in simulator, embedded in the
// process and served on a loopback port, so the agent talks HTTP to it as
// to any other engine.
type Sim struct {
	cfg sim.Config
	up  *upstream

	mu      sync.Mutex
	srv     *sim.Server
	cancel  context.CancelFunc
	done    chan error
	loaded  time.Duration
	serving atomic.Bool
}

var _ Engine = (*Sim)(nil)

// NewSim returns a simulator engine. cfg.Addr is ignored (Start listens on
// a free loopback port). When cfg.Crash is nil, CrashAfter stops the
// embedded server instead of exiting the process, so the engine turns
// unhealthy as a crashed vLLM would.
func NewSim(cfg sim.Config) *Sim {
	e := &Sim{up: newUpstream(nil)}
	if cfg.Crash == nil {
		cfg.Crash = e.crash
	}
	if len(cfg.Models) == 0 {
		cfg.Models = []string{sim.DefaultModel}
	}
	e.cfg = cfg
	return e
}

// Server returns the running simulator (nil before Start), for tests that
// look at what it served.
func (e *Sim) Server() *sim.Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv
}

// Start serves a new simulator on 127.0.0.1 and a port from the OS.
func (e *Sim) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cancel != nil {
		return errors.New("sim engine: already started")
	}
	start := time.Now()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("sim engine: listen: %w", err)
	}
	e.srv = sim.New(e.cfg)
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel, e.done = cancel, make(chan error, 1)
	e.up.set("http://"+ln.Addr().String(), e.cfg.APIKey)
	e.serving.Store(true)
	go func(srv *sim.Server, done chan error) {
		err := srv.Serve(life, ln)
		e.serving.Store(false)
		done <- err
	}(e.srv, e.done)
	e.loaded = time.Since(start)
	return nil
}

// crash is the embedded simulator's Crash: the server goes away, the
// engine stays down until Stop and Start.
func (e *Sim) crash() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.serving.Store(false)
	if e.cancel != nil {
		e.cancel()
	}
}

// Stop shuts the simulator down, letting requests in flight finish for up
// to five seconds.
func (e *Sim) Stop(ctx context.Context) error {
	e.mu.Lock()
	cancel, done := e.cancel, e.done
	e.cancel = nil
	e.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("sim engine: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sim engine: stop: %w", ctx.Err())
	}
}

// Do implements Engine.
func (e *Sim) Do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	return e.up.do(ctx, path, body)
}

// Proxy implements Engine.
func (e *Sim) Proxy(ctx context.Context, path string, body []byte, w http.ResponseWriter) error {
	return e.up.proxy(ctx, path, body, w)
}

// Models implements Engine.
func (e *Sim) Models() []string { return slices.Clone(e.cfg.Models) }

// Stats implements Engine from the simulator's /metrics.
func (e *Sim) Stats(ctx context.Context) (Stats, error) {
	st, err := e.up.stats(ctx)
	if err != nil {
		return Stats{}, err
	}
	e.mu.Lock()
	st.LoadDurationSeconds = e.loaded.Seconds()
	e.mu.Unlock()
	st.Model = e.cfg.Models[0]
	st.Loaded = e.Healthy()
	return st, nil
}

// MetricsURL implements Engine.
func (e *Sim) MetricsURL() string { return e.up.metricsURL() }

// Healthy reports whether the simulator is serving.
func (e *Sim) Healthy() bool { return e.serving.Load() }
