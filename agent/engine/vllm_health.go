package engine

import (
	"context"
	"net/http"
	"time"
)

// healthOnce asks the current child's /health once, allowing it timeout.
func (e *VLLM) healthOnce(ctx context.Context, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	status, _, err := e.up.get(ctx, "/health", 4096)
	return err == nil && status == http.StatusOK
}

// setHealthy records what the supervisor found out about the child and
// returns what Healthy reported before. Each call is a new finding, which
// voids a probe after a failed request that started before it.
func (e *VLLM) setHealthy(ok bool) bool {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	e.healthGen++
	return e.healthy.Swap(ok)
}

// probeAfterError checks /health after a request failed and stores the
// answer, so a crash is seen by every request it fails; one probe runs at
// a time (probeGate). The probe outlives the caller's ctx (by at most
// errProbeTimeout) so a caller giving up does not make it fail.
//
// A finding of the supervisor made while the probe ran wins: the probe may
// have asked a child that has exited since (its "healthy" would then hide
// the restart) or one that has become healthy since.
func (e *VLLM) probeAfterError(ctx context.Context) {
	e.probe.run(ctx, func() {
		e.healthMu.Lock()
		gen := e.healthGen
		e.healthMu.Unlock()
		ok := e.healthOnce(context.WithoutCancel(ctx), e.errProbeTimeout)
		e.healthMu.Lock()
		changed := e.healthGen == gen && e.healthy.Swap(ok) != ok
		e.healthMu.Unlock()
		if changed {
			e.log.Warn("vllm health changed after a failed request", "pid", e.PID(), "healthy", ok)
		}
	})
}

// watch checks the child's health every healthPoll until it exits or the
// engine stops. A child that fails every check for HangTimeout while its
// process lives on is hung: watch stops it (killHung) and returns once it
// exited, for supervise to restart it.
func (e *VLLM) watch(p *vllmProc) {
	t := time.NewTicker(e.healthPoll)
	defer t.Stop()
	lastOK := time.Now() // launch hands over a healthy child
	for {
		select {
		case <-p.exited:
			return
		case <-e.life.Done():
			<-p.exited // Stop is ending it
			return
		case <-t.C:
		}
		ok := e.healthOnce(e.life, e.probeTimeout)
		if ok != e.setHealthy(ok) {
			e.log.Warn("vllm health changed", "pid", p.pid, "healthy", ok)
		}
		if ok {
			lastOK = time.Now()
			continue
		}
		// A check that failed because the child exited or the engine is
		// stopping says nothing about a hang; the next round returns.
		if down := time.Since(lastOK); down >= e.cfg.HangTimeout && !hasExited(p) && e.life.Err() == nil {
			e.killHung(p, down)
			return
		}
	}
}

// killHung stops a child that stopped answering /health: SIGTERM to its
// process group, SIGKILL after StopGrace. It returns once the leader exited.
func (e *VLLM) killHung(p *vllmProc, down time.Duration) {
	e.hangKills.Add(1)
	e.log.Warn("vllm hung: failing health checks while alive; stopping it for a restart",
		"pid", p.pid, "unhealthy_for", down.Round(time.Millisecond).String(), "hang_timeout", e.cfg.HangTimeout.String())
	if err := e.terminate(context.Background(), p); err != nil {
		e.log.Warn("stop hung vllm", "pid", p.pid, "err", err)
	}
}

// hasExited reports whether p's leader has been waited for.
func hasExited(p *vllmProc) bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}
