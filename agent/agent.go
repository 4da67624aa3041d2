// Package agent is the vbatch agent: one per GPU host. It registers with
// the coordinators (found over gossip), leases chunks of batches for the
// models its engine serves, runs their lines on the engine with bounded
// concurrency, commits results in ordered parts fenced by the lease's
// token, and reports GPU and engine telemetry. It also serves /metrics,
// /health and the online-inference endpoints coordinators route to.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/agent/gpu"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/dirlock"
	"github.com/vbatch/vbatch/internal/ids"
	"github.com/vbatch/vbatch/internal/tlsutil"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// Lease timings used until a coordinator says otherwise at registration.
const (
	defaultLeaseTTL      = 30 * time.Second
	defaultRenewInterval = 10 * time.Second
)

// Release reasons the agent sends.
const (
	reasonShutdown      = "shutdown"
	reasonDrain         = "drain"
	reasonCancelled     = "cancelled"
	reasonEngineFailure = "engine failure"
	reasonEngineCrash   = fsm.ReleaseEngineCrash
	reasonInputFailure  = "input read failure"
	reasonCommitFailure = "commit failure"
	reasonLineFailure   = "line failure"
)

// Agent runs batch work on one host. Create it with New and start it with
// Run; Drain hands its leases back.
type Agent struct {
	cfg     Config
	eng     engine.Engine
	gpus    gpu.Discoverer
	log     *slog.Logger
	metrics *metrics
	runner  *runner
	coords  *coordClient
	// tls is nil unless TLS is configured.
	tls *tlsutil.Store

	id      string
	models  []string
	rpcAddr string
	pool    *gossip.Pool

	leaseTTL      atomic.Int64 // nanoseconds
	renewInterval atomic.Int64 // nanoseconds
	draining      atomic.Bool
	held          atomic.Int64  // leases held now
	regGen        atomic.Uint64 // successful registrations so far

	// life outlives Run's context by up to ShutdownTimeout so held leases
	// can commit and release; stopCtx ends when the agent stops taking
	// leases (drain or shutdown). Both are set before Run starts work.
	life     context.Context
	stopCtx  context.Context
	stopFn   context.CancelFunc
	stopOnce sync.Once
	reason   atomic.Value // string: why the agent stopped taking leases
	started  chan struct{}
	attached chan struct{} // closed once the first Attach stream is up
	workers  sync.WaitGroup
	done     chan struct{} // closed when every lease worker has exited
	regMu    sync.Mutex

	xidMu      sync.Mutex
	xidPending []uint64
}

// New returns an agent that runs work on eng and reports the GPUs gpus
// finds. gpus may be nil (no GPUs); the caller keeps ownership of it and
// closes it after Run returns. A nil logger discards logs.
func New(cfg Config, eng engine.Engine, gpus gpu.Discoverer, logger *slog.Logger) *Agent {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := newMetrics()
	a := &Agent{
		cfg:      cfg,
		eng:      eng,
		gpus:     gpus,
		log:      logger,
		metrics:  m,
		runner:   newRunner(cfg, eng, m, logger),
		started:  make(chan struct{}),
		attached: make(chan struct{}),
		done:     make(chan struct{}),
	}
	a.leaseTTL.Store(int64(defaultLeaseTTL))
	a.renewInterval.Store(int64(defaultRenewInterval))
	a.reason.Store(reasonShutdown)
	a.stopCtx, a.stopFn = context.WithCancel(context.Background())
	return a
}

// Run starts the engine, the HTTP listener and gossip, registers with a
// coordinator and works leases until ctx ends. Call it once. Then it stops taking leases,
// commits what finished and releases what it holds (within
// ShutdownTimeout), leaves gossip and stops the engine.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.cfg.Validate(); err != nil {
		return err
	}
	if err := a.setupTLS(); err != nil {
		return err
	}
	if a.cfg.DataDir != "" {
		// One agent per data dir: its vLLM children are marked with it, and
		// an agent kills the marked processes it did not start.
		unlock, err := dirlock.Lock(a.cfg.DataDir, "agent.lock")
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer unlock()
	}
	id, err := a.cfg.nodeID()
	if err != nil {
		return err
	}
	a.id = id
	a.log = a.log.With("agent", id)
	a.runner.log = a.log
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("agent listen %s: %w", a.cfg.MetricsAddr, err)
	}
	a.rpcAddr = a.cfg.AdvertiseAddr
	if a.rpcAddr == "" {
		if a.rpcAddr, err = advertised(a.cfg.MetricsAddr, ln.Addr()); err != nil {
			ln.Close()
			return err
		}
	}
	life, cancelLife := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelLife()
	// stopCtx also ends when life does, so nothing outlives Run.
	stop := context.AfterFunc(life, a.stopFn)
	defer stop()
	a.life = life

	srv := a.serveHTTP(ln)
	if err := a.eng.Start(ctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("agent %s: start engine: %w", id, err)
	}
	a.models = a.cfg.Models
	if len(a.models) == 0 {
		a.models = a.eng.Models()
	}
	discover := a.cfg.Coordinators
	if discover == nil {
		if err := a.startGossip(ctx); err != nil {
			a.shutdown(srv)
			return err
		}
		discover = a.gossipCoordinators
	}
	a.coords = newCoordClient(discover, a.tls, a.log)
	close(a.started)

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	var loops sync.WaitGroup
	loops.Go(func() { a.telemetryLoop(loopCtx) })
	loops.Go(func() { a.attachLoop(loopCtx) })
	if err := a.register(ctx); err != nil && ctx.Err() == nil {
		a.logRegisterError("register", err)
		a.stop(reasonShutdown)
		stopLoops()
		loops.Wait()
		a.shutdown(srv)
		return err
	}
	for i := 0; i < a.cfg.MaxLeases; i++ {
		a.workers.Go(func() {
			a.waitAttached(attachFirstWait)
			a.leaseWorker()
		})
	}
	go func() { a.workers.Wait(); close(a.done) }()
	a.log.Info("agent running", "rpc_addr", a.rpcAddr, "models", a.models, "max_leases", a.cfg.MaxLeases)

	<-ctx.Done()
	a.log.Info("agent shutting down")
	deadline := time.Now().Add(a.cfg.ShutdownTimeout)
	// Leases get the shutdown budget less what leaving and stopping the
	// engine need; past that their requests and calls are cut off.
	hard := time.AfterFunc(a.cfg.ShutdownTimeout-shutdownReserve(a.cfg.ShutdownTimeout), cancelLife)
	defer hard.Stop()
	a.stop(reasonShutdown)
	<-a.done
	loops.Wait()
	a.shutdownBy(srv, deadline)
	return nil
}

// shutdownReserve is the part of a shutdown budget kept for leaving gossip,
// stopping the HTTP server and stopping the engine: a third, at most 40 s.
func shutdownReserve(total time.Duration) time.Duration {
	return min(total/3, 40*time.Second)
}

// Bounds of the steps before the engine stops, so that slow online
// requests or an unreachable gossip pool leave the engine its stop grace.
const (
	leaveTimeout        = 5 * time.Second
	httpShutdownTimeout = 5 * time.Second
)

// shutdown leaves gossip and stops the HTTP server and the engine within
// a fresh shutdown reserve; used when Run fails before its main loop.
func (a *Agent) shutdown(srv *http.Server) {
	a.shutdownBy(srv, time.Now().Add(shutdownReserve(a.cfg.ShutdownTimeout)))
}

// shutdownBy leaves gossip and stops the HTTP server and the engine, all
// by deadline: the engine is stopped even when the steps before it or the
// drain overran, killed outright (VLLM) once the deadline passes.
func (a *Agent) shutdownBy(srv *http.Server, deadline time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	// memberlist's Leave waits without a limit when given none: with the
	// budget spent, the engine's stop comes first and gossip finds the
	// agent gone on its own.
	if d := min(leaveTimeout, time.Until(deadline)); a.pool != nil && d > 0 {
		if err := a.pool.Leave(d); err != nil {
			a.log.Warn("leave gossip", "err", err)
		}
	}
	hctx, hcancel := context.WithTimeout(ctx, httpShutdownTimeout)
	if err := srv.Shutdown(hctx); err != nil {
		a.log.Warn("stop http server; closing open connections", "err", err)
		_ = srv.Close()
	}
	hcancel()
	if err := a.eng.Stop(ctx); err != nil {
		a.log.Warn("stop engine", "err", err)
	}
}

// stop makes the agent take no new leases and stop the ones it holds
// gracefully, releasing them with reason.
func (a *Agent) stop(reason string) {
	a.stopOnce.Do(func() {
		a.reason.Store(reason)
		a.stopFn()
	})
}

// stopReason is why held leases are being released.
func (a *Agent) stopReason() string { return a.reason.Load().(string) }

// Drain stops taking leases, commits the finished lines of held leases and
// releases them with reason "drain", and tells the coordinators the agent
// is draining. It returns once no lease is held, or when ctx ends. The
// agent keeps serving /metrics and the online endpoints until Run ends.
func (a *Agent) Drain(ctx context.Context) error {
	a.draining.Store(true)
	a.stop(reasonDrain)
	select {
	case <-a.started:
	case <-ctx.Done():
		return fmt.Errorf("agent drain: %w", ctx.Err())
	}
	if err := a.register(ctx); err != nil {
		a.logRegisterError("register as draining", err)
	}
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent drain: %w", ctx.Err())
	}
}

// ID is the agent's node id, known once Run has started.
func (a *Agent) ID() string { return a.id }

// leaseWorker long-polls for leases and processes them one at a time until
// the agent stops taking leases.
func (a *Agent) leaseWorker() {
	wait := time.Second
	att := newLeaseAttempt()
	for a.stopCtx.Err() == nil {
		if !a.eng.Healthy() {
			sleepCtx(a.stopCtx, time.Second)
			continue
		}
		gen := a.regGen.Load()
		lease, err := a.lease(a.stopCtx, att)
		if err == nil {
			// Answered: the next poll is a new attempt. Until then every
			// call repeats this one, which may have been granted a lease
			// whose answer was lost.
			att = newLeaseAttempt()
		}
		switch {
		case a.stopCtx.Err() != nil && (err != nil || !lease.Granted):
			return
		case connect.CodeOf(err) == connect.CodeNotFound:
			// The coordinators forgot this agent (it was declared dead).
			a.log.Info("coordinator does not know this agent; registering again")
			if err := a.reregister(a.stopCtx, gen); err != nil && a.stopCtx.Err() == nil {
				a.logRegisterError("register again", err)
				sleepCtx(a.stopCtx, wait)
			}
			continue
		case err != nil:
			a.log.Warn("lease", "err", err)
			sleepCtx(a.stopCtx, wait)
			wait = min(2*wait, 30*time.Second)
			continue
		}
		wait = time.Second
		if lease.Granted {
			a.processLease(lease)
		}
	}
}

// leaseAttempt is one logical long poll for a chunk, which may take
// several calls: every call after the first tells the coordinator that an
// earlier one may have been granted a lease the agent never heard of.
type leaseAttempt struct {
	id   string
	sent bool
}

func newLeaseAttempt() *leaseAttempt { return &leaseAttempt{id: ids.Random(16)} }

// lease makes one long poll for a chunk, as part of the attempt att.
func (a *Agent) lease(ctx context.Context, att *leaseAttempt) (*vbatchv1.LeaseResponse, error) {
	var resp *vbatchv1.LeaseResponse
	req := &vbatchv1.LeaseRequest{AgentId: a.id, Models: a.models, WaitMs: a.cfg.LeaseWait.Milliseconds(), RequestId: att.id}
	err := a.coords.call(ctx, "lease", a.cfg.LeaseWait+15*time.Second, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		req.Retry = att.sent
		att.sent = true
		r, err := c.Lease(ctx, connect.NewRequest(req))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// isNotFound reports whether a coordinator no longer knows the chunk.
func isNotFound(err error) bool { return connect.CodeOf(err) == connect.CodeNotFound }

// isStale reports whether a coordinator refused a call because the
// lease's fencing token is no longer live.
func isStale(err error) bool {
	if err == nil {
		return false
	}
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Code() == connect.CodeFailedPrecondition {
		return true
	}
	return strings.Contains(strings.ToLower(err.Error()), "stale")
}

// refused reports whether a coordinator answered a call with a refusal
// that no retry changes (a stale token, an unknown chunk, a bad request),
// as opposed to a call that broke on the way (a coordinator that died
// mid-stream ends it with an unexpected EOF, code unknown), which another
// coordinator may serve.
func refused(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeFailedPrecondition, connect.CodeNotFound, connect.CodeInvalidArgument,
		connect.CodePermissionDenied, connect.CodeUnauthenticated, connect.CodeOutOfRange:
		return true
	}
	return isStale(err)
}
