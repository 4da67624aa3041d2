package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// leaseRun works one held lease. Its main loop (run) owns all of the
// state below the line; the reader, the renewer, the line goroutines and
// the committer talk to it over channels.
//
// Results are committed strictly in line order: finished lines wait in
// buffer until every line before them has finished, and a part is always
// the contiguous range [next, readyEnd). At most one part is in flight, so
// parts reach the coordinator in order.
type leaseRun struct {
	a   *Agent
	l   *vbatchv1.LeaseResponse
	log *slog.Logger

	// tokenCtx bounds every call that carries the lease's token; it is
	// cancelled the moment the lease is revoked. reqCtx bounds engine
	// requests; it is cancelled on revocation or when a drain times out.
	tokenCtx   context.Context
	dropToken  context.CancelFunc
	reqCtx     context.Context
	cancelReqs context.CancelFunc

	revoked      chan struct{}
	revokeOnce   sync.Once
	cancelled    chan struct{}
	cancelOnce   sync.Once
	results      chan lineDone
	commitDone   chan commitOutcome
	readErr      error // set by the reader before it closes its channel
	drainTimeout time.Duration

	// ---- owned by run ----
	buffer        map[int64]lineResult
	next          int64 // first line not yet sent in a part
	readyEnd      int64 // buffer holds every line of [next, readyEnd)
	committed     int64 // the coordinator's progress as last acknowledged
	done          bool  // the coordinator marked the chunk done with the last part
	inflight      int
	committing    bool
	commitBroken  bool
	lastFlush     time.Time
	stopping      string // why the lease is winding down; "" while running
	isRevoked     bool
	startedEnd    int64 // one past the last line started
	aloneInFlight bool  // an isolated line is running
	// crashedAlone is the line the engine crashed under while it ran alone;
	// -1 when none.
	crashedAlone int64
	crashed      bool // the engine crashed under a request of this lease
	// onEngine counts the lease's requests on the engine now.
	onEngine atomic.Int64
}

// numberedLine is an input line with its line number in the input file.
type numberedLine struct {
	n   int64
	raw []byte
}

// lineDone is a line goroutine's report.
type lineDone struct {
	res lineResult
	err error
}

// part is a contiguous range of finished lines ready to commit.
type part struct {
	from, to          int64
	output, errors    []byte
	succeeded, failed int64
	usage             *vbatchv1.Usage
}

// commitOutcome is the committer's report on one part.
type commitOutcome struct {
	p         part
	progress  int64
	completed bool
	err       error
}

// processLease works a granted lease to its end: completed, released, or
// dropped because it was revoked.
func (a *Agent) processLease(l *vbatchv1.LeaseResponse) {
	a.metrics.LeasesHeld.Inc()
	a.held.Add(1)
	defer func() { a.metrics.LeasesHeld.Dec(); a.held.Add(-1) }()
	r := &leaseRun{
		a:            a,
		l:            l,
		log:          a.log.With("batch_id", l.BatchId, "chunk", l.Chunk, "token", l.Token),
		revoked:      make(chan struct{}),
		cancelled:    make(chan struct{}),
		results:      make(chan lineDone, cap(a.runner.slots)),
		commitDone:   make(chan commitOutcome, 1),
		drainTimeout: a.cfg.DrainTimeout,
		buffer:       make(map[int64]lineResult),
		next:         l.Progress,
		readyEnd:     l.Progress,
		committed:    l.Progress,
		startedEnd:   l.Progress,
		crashedAlone: -1,
		lastFlush:    time.Now(),
	}
	r.tokenCtx, r.dropToken = context.WithCancel(a.life)
	defer r.dropToken()
	r.reqCtx, r.cancelReqs = context.WithCancel(a.life)
	defer r.cancelReqs()
	r.log.Info("lease granted", "model", l.Model, "start", l.StartLine, "end", l.EndLine, "progress", l.Progress)
	status := r.run()
	a.metrics.ChunksProcessed.WithLabelValues(status).Inc()
	r.log.Info("lease finished", "status", status, "committed", r.committed)
}

// revoke stops the lease at once: no call carries its token from now on.
func (r *leaseRun) revoke() {
	r.revokeOnce.Do(func() {
		close(r.revoked)
		r.dropToken()
		r.cancelReqs()
	})
}

// cancel records a CANCELLED verdict.
func (r *leaseRun) cancel() { r.cancelOnce.Do(func() { close(r.cancelled) }) }

// run is the lease's main loop; it returns the outcome for metrics.
func (r *leaseRun) run() string {
	readCtx, stopReading := context.WithCancel(r.tokenCtx)
	defer stopReading()
	// The reader runs ahead of the lines started by at most 256 lines and
	// InputBufferBytes bytes: lines can be megabytes each.
	lines := make(chan numberedLine, 256)
	budget := newByteBudget(r.a.cfg.InputBufferBytes)
	go r.readLoop(readCtx, lines, budget)
	go r.renewLoop()

	// The tick drives time-based flushes and the engine health check.
	tickEvery := max(min(r.a.cfg.PartInterval, r.a.cfg.EngineFailureTimeout/2, time.Second), 10*time.Millisecond)
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	var drain <-chan time.Time
	var unhealthySince time.Time
	var pending *numberedLine
	inputDone := false
	// Local copies of the signal channels, set to nil once handled so a
	// closed channel does not spin the loop.
	revoked, cancelled, agentStop := r.revoked, r.cancelled, r.a.stopCtx.Done()

	startStop := func(reason string) {
		if r.stopping != "" || r.isRevoked {
			return
		}
		r.stopping = reason
		r.log.Info("lease stopping", "reason", reason, "in_flight", r.inflight)
		stopReading()
		lines, pending = nil, nil
		drain = time.After(r.drainTimeout)
	}

	for {
		if r.isRevoked {
			if r.inflight == 0 && !r.committing {
				return chunkRevoked
			}
		} else if r.inflight == 0 && !r.committing && (r.stopping != "" || (inputDone && pending == nil)) {
			if r.readyEnd > r.next && !r.commitBroken {
				r.startCommit()
				continue
			}
			return r.finish()
		} else if !r.committing && !r.commitBroken && r.flushDue() {
			r.startCommit()
		}

		// Offer the slot channel only when a line waits to start, and may:
		// an isolated line starts only once nothing else of the lease is in
		// flight, and nothing starts beside it.
		var slots chan struct{}
		var in <-chan numberedLine
		if r.stopping == "" && !r.isRevoked {
			if pending != nil {
				if !r.aloneInFlight && (!r.isolated(pending.n) || r.inflight == 0) {
					slots = r.a.runner.slots
				}
			} else if !inputDone {
				in = lines
			}
		}
		select {
		case ln, ok := <-in:
			if !ok {
				switch {
				case r.readErr == nil:
					inputDone = true
				case errors.Is(r.readErr, context.Canceled):
					// The token was dropped or the agent's life ended: the
					// signal that did it ends the lease, not this.
					lines = nil
				case isStale(r.readErr) || isNotFound(r.readErr):
					r.log.Warn("input refused: lease lost", "err", r.readErr)
					r.markRevoked()
				default:
					r.log.Error("read input", "err", r.readErr)
					startStop(reasonInputFailure)
				}
				continue
			}
			budget.release(int64(len(ln.raw)))
			pending = &ln
		case slots <- struct{}{}:
			r.inflight++
			mode := r.modeOf(pending.n)
			r.aloneInFlight = mode.alone
			r.startedEnd = max(r.startedEnd, pending.n+1)
			go r.runLine(*pending, mode)
			pending = nil
		case d := <-r.results:
			r.inflight--
			r.aloneInFlight = false
			r.accept(d, startStop)
		case o := <-r.commitDone:
			r.committing = false
			r.settle(o, startStop)
		case <-revoked:
			r.markRevoked()
			revoked = nil
		case <-cancelled:
			startStop(reasonCancelled)
			cancelled = nil
		case <-agentStop:
			startStop(r.a.stopReason())
			agentStop = nil
		case <-drain:
			r.log.Warn("drain timed out; abandoning requests in flight", "in_flight", r.inflight)
			r.cancelReqs()
			drain = nil
		case <-tick.C:
			if r.a.eng.Healthy() {
				unhealthySince = time.Time{}
			} else if unhealthySince.IsZero() {
				unhealthySince = time.Now()
			} else if time.Since(unhealthySince) > r.a.cfg.EngineFailureTimeout {
				if r.onEngine.Load() > 0 {
					// The engine went down, and stayed down, under requests
					// of this lease: it hung (or died) under them. Counted as
					// a crash, so a request that hangs the engine is found as
					// one that crashes it is.
					r.noteCrash(-1)
					r.log.Warn("engine down under requests of the lease", "on_engine", r.onEngine.Load())
					startStop(reasonEngineCrash)
				} else {
					startStop(reasonEngineFailure)
				}
				// Nothing in flight will finish on a dead engine: the
				// lines waiting for it, or hung on it, are given up now
				// rather than after a drain.
				r.cancelReqs()
			}
		}
	}
}

// markRevoked switches the loop to "drop everything": uncommitted results
// are discarded and nothing more is called with the token.
func (r *leaseRun) markRevoked() {
	if r.isRevoked {
		return
	}
	r.isRevoked = true
	r.revoke()
	r.buffer = nil
	r.log.Warn("lease revoked; dropping uncommitted results", "committed", r.committed)
}

// isolated reports whether line n must run alone (fsm.Isolation).
func (r *leaseRun) isolated(n int64) bool { return n < r.l.IsolateUntil }

// modeOf says how line n runs: alone when isolated; the line at the
// lease's progress that already crashed the engine alone is failed at the
// limit, or on its next crash one short of it.
func (r *leaseRun) modeOf(n int64) lineMode {
	m := lineMode{alone: r.isolated(n), onEngine: &r.onEngine}
	if n == r.l.Progress && r.l.HeadCrashes > 0 {
		m.alone = true
		m.headCrashes = r.l.HeadCrashes
		m.failNow = r.l.HeadCrashes >= fsm.HeadCrashLimit
		m.failOnCrash = r.l.HeadCrashes+1 >= fsm.HeadCrashLimit
	}
	return m
}

// runLine runs one line on the engine and reports it; the slot it holds is
// given back before the report so a busy main loop never holds the engine
// idle.
func (r *leaseRun) runLine(ln numberedLine, mode lineMode) {
	res, err := r.a.runner.run(r.reqCtx, ln.n, ln.raw, mode)
	if errors.Is(err, errEngineCrashed) && mode.alone {
		res.crashedAlone = true
	}
	r.a.runner.release()
	res.line = ln.n
	r.results <- lineDone{res: res, err: err}
}

// noteCrash records that the engine went down under the lease's requests;
// aloneLine is the line that ran alone on it then, -1 when none did. The
// lease is released as a crash whatever else made it stop.
func (r *leaseRun) noteCrash(aloneLine int64) {
	if r.crashed {
		return
	}
	r.crashed = true
	if aloneLine < 0 && r.aloneInFlight {
		aloneLine = r.startedEnd - 1 // nothing starts beside an alone line
	}
	r.crashedAlone = aloneLine
}

// accept takes a finished line into the buffer.
func (r *leaseRun) accept(d lineDone, startStop func(string)) {
	if r.isRevoked {
		return
	}
	if errors.Is(d.err, errEngineCrashed) {
		// The engine died under the lease's requests: the others in flight
		// died with it. Commit what finished in order and release with the
		// crash, so the coordinator can isolate the lines that were running.
		line := int64(-1)
		if d.res.crashedAlone {
			line = d.res.line
		}
		r.noteCrash(line)
		startStop(reasonEngineCrash)
		r.cancelReqs()
		return
	}
	if d.err != nil {
		if !errors.Is(d.err, errAbandoned) {
			r.log.Error("line failed without a result", "line", d.res.line, "err", d.err)
		}
		// A line without a result is a hole: nothing after it can be
		// committed by this lease. (When the lease is already stopping this
		// changes nothing.)
		startStop(reasonLineFailure)
		return
	}
	r.buffer[d.res.line] = d.res
	for {
		if _, ok := r.buffer[r.readyEnd]; !ok {
			break
		}
		r.readyEnd++
	}
}

// flushDue reports whether a part should be committed now: PartLines
// lines are ready, or some are and PartInterval has passed.
func (r *leaseRun) flushDue() bool {
	ready := r.readyEnd - r.next
	if ready <= 0 {
		return false
	}
	return ready >= int64(r.a.cfg.PartLines) || time.Since(r.lastFlush) >= r.a.cfg.PartInterval
}

// startCommit cuts the next part (at most PartLines lines, and PartBytes
// bytes unless its first line alone is larger) from the ready prefix and
// hands it to a committer goroutine.
func (r *leaseRun) startCommit() {
	limit := min(r.readyEnd, r.next+int64(r.a.cfg.PartLines))
	p := part{from: r.next, usage: &vbatchv1.Usage{}}
	var size int64
	for n := p.from; n < limit; n++ {
		res := r.buffer[n]
		size += int64(len(res.output) + len(res.errLine))
		if n > p.from && size > r.a.cfg.PartBytes {
			break
		}
		p.to = n + 1
		delete(r.buffer, n)
		if res.output != nil {
			p.output = append(p.output, res.output...)
			p.succeeded++
			fsm.AddUsage(p.usage, res.usage)
		} else {
			p.errors = append(p.errors, res.errLine...)
			p.failed++
		}
	}
	r.next = p.to
	r.committing = true
	r.lastFlush = time.Now()
	go func() {
		o := commitOutcome{p: p}
		resp, err := r.putResults(p)
		if err == nil {
			o.progress, o.completed = resp.Progress, resp.Completed
		}
		o.err = err
		r.commitDone <- o
	}()
}

// settle applies a committer's report.
func (r *leaseRun) settle(o commitOutcome, startStop func(string)) {
	if r.isRevoked {
		return
	}
	switch {
	case o.err == nil:
		r.committed = o.p.to
		r.done = o.completed
		r.a.metrics.PartsCommitted.Inc()
		if o.progress != 0 && o.progress != o.p.to {
			r.log.Warn("coordinator progress differs from committed part", "part_to", o.p.to, "progress", o.progress)
		}
	case isStale(o.err) || isNotFound(o.err):
		r.log.Warn("part refused: lease lost", "from", o.p.from, "to", o.p.to, "err", o.err)
		r.markRevoked()
	default:
		// The part may or may not have landed; either way this lease can
		// no longer commit in order. Release: the coordinator's progress is
		// the truth the next lease starts from.
		r.log.Error("commit part", "from", o.p.from, "to", o.p.to, "err", o.err)
		r.commitBroken = true
		startStop(reasonCommitFailure)
		// Nothing the lines in flight produce can be committed now: give
		// them up rather than run out a drain for nothing.
		r.cancelReqs()
	}
}

// finish ends a lease whose lines are all settled: nothing more when the
// last part already completed the chunk, Complete when every line is
// committed but the coordinator did not complete the chunk with the part
// (not every coordinator applies that yet), else Release with the stop
// reason.
//
// A cancelled batch's lease that the last part did not complete is
// released: the coordinator is finalizing the batch and has no use for a
// completion.
func (r *leaseRun) finish() string {
	if r.done && !r.commitBroken {
		return chunkCompleted
	}
	if r.committed == r.l.EndLine && !r.commitBroken && r.stopping != reasonCancelled {
		if err := r.complete(); err != nil {
			if isStale(err) || isNotFound(err) {
				r.markRevoked()
				return chunkRevoked
			}
			r.log.Error("complete chunk", "err", err)
			return chunkFailed
		}
		return chunkCompleted
	}
	reason := r.stopping
	if reason == "" {
		reason = reasonCommitFailure
	}
	if r.crashed {
		// Alone only when every line before the crashed one is committed:
		// the coordinator counts it against the line at its progress.
		alone := r.crashedAlone >= 0 && r.committed == r.crashedAlone && !r.commitBroken
		if err := r.releaseCrash(alone); err != nil {
			r.log.Error("release lease", "reason", reason, "err", err)
		}
		return chunkReleased
	}
	if err := r.release(reason); err != nil {
		r.log.Error("release lease", "reason", reason, "err", err)
	}
	return chunkReleased
}
