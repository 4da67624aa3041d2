package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbatch/vbatch/internal/ids"
)

// VLLMConfig says how to start vLLM.
type VLLMConfig struct {
	// Bin is the vllm executable. Empty means "vllm" from PATH.
	Bin string
	// Model is the model to serve (a Hugging Face id or a local path), the
	// first argument of `vllm serve`.
	Model string
	// Args are extra arguments for `vllm serve`, e.g.
	// ["--tensor-parallel-size", "2"]. --host and --port are set by the
	// agent, and the API key is passed in VLLM_API_KEY: none may be given.
	Args []string
	// GPUs, when set, becomes CUDA_VISIBLE_DEVICES of the child.
	GPUs string
	// Logger receives the child's output, one record per line, and the
	// supervisor's events. Nil discards them.
	Logger *slog.Logger
	// HealthTimeout bounds how long a start may take until /health answers
	// 200 (downloading and loading a large model takes minutes). Zero means
	// 30 minutes.
	HealthTimeout time.Duration
	// StopGrace is how long Stop, and the hang watchdog, wait after SIGTERM
	// before SIGKILL. Zero means 30 seconds.
	StopGrace time.Duration
	// HangTimeout is how long a vLLM that was healthy may fail every
	// /health check (answering an error, or nothing) while its process
	// lives on, e.g. with a deadlocked engine core, before it is taken for
	// hung: it is then stopped like Stop does and restarted with the usual
	// back-off. Zero means 2 minutes. It should span several health polls
	// (every 5 seconds, each allowed 5 seconds).
	HangTimeout time.Duration
	// Owner marks the agent's vLLM processes: every child gets
	// VBATCH_VLLM_OWNER=Owner in its environment, and its workers inherit
	// it. Before each start, processes of the agent's user that carry
	// exactly this value are left over from an earlier run (workers that
	// outlived an agent killed with SIGKILL hold GPU memory) and are
	// killed. The agent passes its absolute data directory, so agents with
	// different data directories on one host leave each other alone. Empty
	// disables the marking and the clean-up; the clean-up works on Linux
	// only.
	Owner string
}

// ownerEnv is the environment variable that carries VLLMConfig.Owner.
const ownerEnv = "VBATCH_VLLM_OWNER"

// Back-off of the restarts of a vLLM that exited.
const (
	defaultBackoffMin  = time.Second
	defaultBackoffMax  = 30 * time.Second
	defaultStableAfter = time.Minute
)

// Defaults of the health checks and of the clean-up before a start.
const (
	defaultHangTimeout  = 2 * time.Minute
	defaultHealthPoll   = 5 * time.Second
	defaultProbeTimeout = 5 * time.Second
	// defaultErrProbeTimeout bounds the /health probe a failed request
	// starts; it is short because the request's caller waits for it.
	defaultErrProbeTimeout = 2 * time.Second
	// defaultStrayWait bounds the wait for killed leftover processes to
	// end (a process that held GPU memory may take seconds to release it).
	defaultStrayWait = 15 * time.Second
)

// VLLM is an engine that runs `vllm serve` as a child process on a free
// loopback port, guarded by a random API key only the agent knows, and
// restarts it with exponential back-off when it exits.
type VLLM struct {
	cfg    VLLMConfig
	log    *slog.Logger
	up     *upstream
	models []string

	// Timings, shortened by tests.
	backoffMin, backoffMax, stableAfter time.Duration
	healthPoll, startPoll               time.Duration
	probeTimeout, errProbeTimeout       time.Duration
	strayWait                           time.Duration

	// healthy is what Healthy reports. The supervisor's own findings go
	// through setHealthy, which counts them in healthGen; the probe after
	// a failed request stores its result only if none came meanwhile
	// (see probeAfterError).
	healthy   atomic.Bool
	healthMu  sync.Mutex
	healthGen uint64
	// probe runs the health probes after failed requests, one at a time.
	probe     probeGate
	hangKills atomic.Int64 // hung children the watchdog killed

	mu       sync.Mutex
	cur      *vllmProc
	restarts int
	loaded   time.Duration
	life     context.Context
	cancel   context.CancelFunc
	done     chan struct{}
}

var _ Engine = (*VLLM)(nil)

// vllmProc is one run of the child.
type vllmProc struct {
	cmd     *exec.Cmd
	pid     int
	base    string
	started time.Time
	exited  chan struct{} // closed when the child has been waited for
	err     error         // the child's exit, valid once exited is closed
	stdout  *lineLogger
	stderr  *lineLogger
}

// NewVLLM returns an engine that will run vLLM as cfg says; Start starts it.
func NewVLLM(cfg VLLMConfig) *VLLM {
	if cfg.Bin == "" {
		cfg.Bin = "vllm"
	}
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = 30 * time.Minute
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 30 * time.Second
	}
	if cfg.HangTimeout <= 0 {
		cfg.HangTimeout = defaultHangTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &VLLM{
		cfg:             cfg,
		log:             log,
		up:              newUpstream(nil),
		models:          servedModelNames(cfg.Model, cfg.Args),
		backoffMin:      defaultBackoffMin,
		backoffMax:      defaultBackoffMax,
		stableAfter:     defaultStableAfter,
		healthPoll:      defaultHealthPoll,
		startPoll:       500 * time.Millisecond,
		probeTimeout:    defaultProbeTimeout,
		errProbeTimeout: defaultErrProbeTimeout,
		strayWait:       defaultStrayWait,
	}
}

// reservedArgs are the vllm serve flags the agent sets itself: letting
// --vllm-args override them would expose vLLM beyond loopback or change its
// key.
var reservedArgs = []string{"--host", "--port", "--api-key", "--uds"}

// checkReservedArgs refuses extra arguments that set a reserved flag.
func checkReservedArgs(args []string) error {
	for _, a := range args {
		name, _, _ := strings.Cut(a, "=")
		if slices.Contains(reservedArgs, name) {
			return fmt.Errorf("vllm engine: %s is set by the agent (vLLM listens on 127.0.0.1 with a per-process key) and may not be given in --vllm-args", name)
		}
	}
	return nil
}

// servedModelNames returns the names vLLM serves the model under: those of
// --served-model-name when given, else the model itself.
func servedModelNames(model string, args []string) []string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--served-model-name="); ok {
			return []string{v}
		}
		if a != "--served-model-name" {
			continue
		}
		var names []string
		for _, n := range args[i+1:] {
			if strings.HasPrefix(n, "-") {
				break
			}
			names = append(names, n)
		}
		if len(names) > 0 {
			return names
		}
	}
	return []string{model}
}

// Start runs vLLM and waits until it answers /health, then supervises it
// until Stop. A vLLM that fails to become healthy is killed and its error
// returned.
func (e *VLLM) Start(ctx context.Context) error {
	if e.cfg.Model == "" {
		return errors.New("vllm engine: no model")
	}
	if err := checkReservedArgs(e.cfg.Args); err != nil {
		return err
	}
	e.mu.Lock()
	if e.cancel != nil {
		e.mu.Unlock()
		return errors.New("vllm engine: already started")
	}
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	e.life, e.cancel, e.done = life, cancel, done
	e.mu.Unlock()

	key := ids.Random(32)
	p, err := e.launch(ctx, key)
	if err != nil {
		cancel()
		e.mu.Lock()
		if e.done == done { // not stopped meanwhile
			e.cancel = nil
		}
		e.mu.Unlock()
		close(done)
		return fmt.Errorf("vllm engine %s: %w", e.cfg.Model, err)
	}
	go e.supervise(p, key)
	return nil
}

// launch kills what is left of an earlier run (see VLLMConfig.Owner),
// starts a child on a fresh port and waits until it is healthy. A child that
// exits or does not become healthy in time is killed.
func (e *VLLM) launch(ctx context.Context, key string) (*vllmProc, error) {
	e.killLeftovers(ctx)
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", e.cfg.Model, "--host", "127.0.0.1", "--port", strconv.Itoa(port)}, e.cfg.Args...)
	cmd := exec.Command(e.cfg.Bin, args...)
	// The key goes in the environment, which only the agent's user can
	// read (/proc/PID/environ), not on the command line every local user
	// sees in ps; vLLM reads VLLM_API_KEY when --api-key is not given.
	set := []string{"VLLM_API_KEY=" + key}
	if e.cfg.GPUs != "" {
		set = append(set, "CUDA_VISIBLE_DEVICES="+e.cfg.GPUs)
	}
	if e.cfg.Owner != "" {
		set = append(set, ownerEnv+"="+e.cfg.Owner)
	}
	// The agent's secrets (VBATCH_*, SENTRY_*, PYROSCOPE_*) stay out of
	// reach of the model code vLLM runs.
	cmd.Env = vllmEnv(os.Environ(), set...)
	p := &vllmProc{
		cmd:    cmd,
		base:   "http://127.0.0.1:" + strconv.Itoa(port),
		exited: make(chan struct{}),
		stdout: newLineLogger(e.log, "stdout"),
		stderr: newLineLogger(e.log, "stderr"),
	}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	// Output pipes held open by a grandchild must not keep Wait from
	// reporting the exit.
	cmd.WaitDelay = 2 * time.Second
	setProcessGroup(cmd)

	e.mu.Lock()
	if e.life.Err() != nil {
		e.mu.Unlock()
		return nil, errors.New("stopped")
	}
	if err := cmd.Start(); err != nil {
		e.mu.Unlock()
		return nil, fmt.Errorf("start %s: %w", e.cfg.Bin, err)
	}
	p.pid, p.started = cmd.Process.Pid, time.Now()
	e.cur = p
	e.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		p.stdout.flush()
		p.stderr.flush()
		close(p.exited)
	}()
	e.log.Info("vllm started", "pid", p.pid, "port", port, "model", e.cfg.Model)

	// A new child: no probe of the old one may report on it.
	e.setHealthy(false)
	e.up.set(p.base, key)
	if err := e.waitHealthy(ctx, p); err != nil {
		e.kill(p)
		e.setHealthy(false) // a probe may have reached it before it failed
		return nil, err
	}
	d := time.Since(p.started)
	e.mu.Lock()
	e.loaded = d
	e.mu.Unlock()
	e.setHealthy(true)
	e.log.Info("vllm healthy", "pid", p.pid, "load_duration", d.String())
	return p, nil
}

// waitHealthy polls /health until it answers 200, the child exits, the
// health timeout passes, or ctx or the engine's life ends.
func (e *VLLM) waitHealthy(ctx context.Context, p *vllmProc) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.HealthTimeout)
	defer cancel()
	stop := context.AfterFunc(e.life, cancel)
	defer stop()
	t := time.NewTicker(e.startPoll)
	defer t.Stop()
	for {
		if e.healthOnce(ctx, e.probeTimeout) {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited before becoming healthy: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("not healthy after %v: %w", time.Since(p.started).Round(time.Millisecond), ctx.Err())
		case <-t.C:
		}
	}
}

// supervise watches the running child p and restarts it whenever it exits,
// until Stop.
func (e *VLLM) supervise(p *vllmProc, key string) {
	defer close(e.done)
	defer e.setHealthy(false)
	backoff := time.Duration(0)
	for {
		e.watch(p)
		e.setHealthy(false)
		e.reap(p)
		if e.life.Err() != nil {
			return
		}
		ran := time.Since(p.started)
		switch {
		case ran >= e.stableAfter || backoff == 0:
			backoff = e.backoffMin
		default:
			backoff = min(2*backoff, e.backoffMax)
		}
		e.log.Warn("vllm exited; restarting", "pid", p.pid, "err", p.err, "ran", ran.Round(time.Millisecond).String(), "backoff", backoff.String())
		for {
			if !sleepCtx(e.life, backoff) {
				return
			}
			e.mu.Lock()
			e.restarts++
			e.mu.Unlock()
			np, err := e.launch(e.life, key)
			if err == nil {
				p = np
				break
			}
			if e.life.Err() != nil {
				return
			}
			backoff = min(2*backoff, e.backoffMax)
			e.log.Warn("vllm restart failed", "err", err, "backoff", backoff.String())
		}
	}
}

// reap kills whatever is left of p's process group once its leader exited
// and waits (up to strayWait) until the group is gone: workers still
// exiting hold GPU memory the next start needs.
func (e *VLLM) reap(p *vllmProc) {
	if err := signalGroup(p.pid, sigKill); err != nil {
		e.log.Warn("kill vllm process group", "pgid", p.pid, "err", err)
	}
	deadline := time.Now().Add(e.strayWait)
	for groupRunning(p.pid) {
		if time.Now().After(deadline) {
			e.log.Warn("vllm process group still alive after SIGKILL", "pgid", p.pid, "waited", e.strayWait.String())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends p's whole process group at once and waits for the leader.
func (e *VLLM) kill(p *vllmProc) {
	_ = signalGroup(p.pid, sigKill)
	e.waitExit(context.Background(), p)
}

// killWait bounds the wait for a child to exit after SIGKILL: a process
// stuck in the kernel (a GPU driver hang) may never exit, and the agent
// must still stop.
const killWait = 10 * time.Second

// waitExit waits for p's leader to exit after SIGKILL, until ctx ends and
// at most killWait; false when it did not.
func (e *VLLM) waitExit(ctx context.Context, p *vllmProc) bool {
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
	case <-ctx.Done():
		// Give the SIGKILL just sent a moment even when ctx is spent.
		select {
		case <-p.exited:
			return true
		case <-time.After(time.Second):
		}
	}
	e.log.Error("vllm did not exit after SIGKILL (stuck in the kernel?)", "pid", p.pid)
	return false
}

// Stop sends SIGTERM to vLLM's process group, SIGKILL after StopGrace (or
// when ctx ends), and returns once the supervisor is done.
func (e *VLLM) Stop(ctx context.Context) error {
	e.mu.Lock()
	cancel, done, p := e.cancel, e.done, e.cur
	e.cancel = nil
	if cancel != nil {
		cancel() // under mu: launch starts no child after this
	}
	e.mu.Unlock()
	if cancel == nil {
		return nil
	}
	e.setHealthy(false)
	var err error
	if p != nil {
		if serr := e.terminate(ctx, p); serr != nil {
			err = fmt.Errorf("vllm engine: %w", serr)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		// The supervisor waits on a child that does not exit; the agent
		// stops anyway.
		select {
		case <-done:
		case <-time.After(killWait):
			return errors.Join(err, fmt.Errorf("vllm engine: supervisor still waiting on pid %d: %w", p.pid, ctx.Err()))
		}
	}
	return err
}

// terminate sends SIGTERM to p's process group, SIGKILL after StopGrace
// (or when ctx ends), and returns once the leader exited. Only a failed
// SIGTERM is an error.
func (e *VLLM) terminate(ctx context.Context, p *vllmProc) error {
	if hasExited(p) {
		// Waited for already, and its group reaped: the pid may name
		// another process group by now.
		return nil
	}
	var err error
	if serr := signalGroup(p.pid, sigTerm); serr != nil {
		err = fmt.Errorf("sigterm %d: %w", p.pid, serr)
	}
	grace := time.NewTimer(e.cfg.StopGrace)
	defer grace.Stop()
	select {
	case <-p.exited:
	case <-grace.C:
		e.log.Warn("vllm did not stop in time; killing", "pid", p.pid, "grace", e.cfg.StopGrace.String())
	case <-ctx.Done():
	}
	// Workers that outlive the leader are killed too.
	_ = signalGroup(p.pid, sigKill)
	if !e.waitExit(ctx, p) {
		err = errors.Join(err, fmt.Errorf("pid %d did not exit after SIGKILL", p.pid))
	}
	return err
}

// Do implements Engine. A request that fails for another reason than ctx
// ending (vLLM crashed or stopped listening) probes /health at once, so
// Healthy turns false before the caller looks, not at the next poll.
func (e *VLLM) Do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	status, b, err := e.up.do(ctx, path, body)
	if err != nil && ctx.Err() == nil {
		e.probeAfterError(ctx)
	}
	return status, b, err
}

// Proxy implements Engine. A request that could not reach vLLM (not one
// whose client went away) probes /health at once, as Do does.
func (e *VLLM) Proxy(ctx context.Context, path string, body []byte, w http.ResponseWriter) error {
	err := e.up.proxy(ctx, path, body, w)
	if err != nil && ctx.Err() == nil && errors.As(err, new(*url.Error)) {
		e.probeAfterError(ctx)
	}
	return err
}

// Models implements Engine: the served model names.
func (e *VLLM) Models() []string { return slices.Clone(e.models) }

// Stats implements Engine from vLLM's /metrics.
func (e *VLLM) Stats(ctx context.Context) (Stats, error) {
	st, err := e.up.stats(ctx)
	if err != nil {
		return Stats{}, err
	}
	e.mu.Lock()
	st.LoadDurationSeconds = e.loaded.Seconds()
	e.mu.Unlock()
	st.Model = e.models[0]
	st.Loaded = e.Healthy()
	return st, nil
}

// MetricsURL implements Engine.
func (e *VLLM) MetricsURL() string { return e.up.metricsURL() }

// Healthy implements Engine.
func (e *VLLM) Healthy() bool { return e.healthy.Load() }

// HangKills returns how many times the hang watchdog stopped a vLLM that
// lived on but failed its health checks for HangTimeout (each is then
// restarted, which Restarts counts).
func (e *VLLM) HangKills() int { return int(e.hangKills.Load()) }

// Restarts returns how many times the supervisor restarted vLLM.
func (e *VLLM) Restarts() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.restarts
}

// PID returns the process id of the current vLLM child; 0 before Start.
func (e *VLLM) PID() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == nil {
		return 0
	}
	return e.cur.pid
}

// LoadDuration returns how long the last start took to become healthy.
func (e *VLLM) LoadDuration() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.loaded
}

// freePort asks the OS for a free loopback port. Another process could take
// it before vLLM binds it; vLLM then exits and the supervisor tries again
// on a new port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// sleepCtx waits for d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
