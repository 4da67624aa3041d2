package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// Per-attempt bounds of the lease's unary calls. A part is replicated to a
// quorum before it commits, so PutResults gets the longest; every attempt
// is also kept under half the lease TTL (attemptTimeout), so that a hung or
// partitioned coordinator is left for another while the lease still lives.
const (
	putAttemptTimeout   = time.Minute
	unaryAttemptTimeout = 30 * time.Second
	// readNoProgressMax is how many input streams in a row may end without
	// a new line before the reader gives up.
	readNoProgressMax = 3
)

// attemptTimeout is limit, or half the lease TTL if that is shorter.
func (r *leaseRun) attemptTimeout(limit time.Duration) time.Duration {
	if ttl := time.Duration(r.a.leaseTTL.Load()); ttl > 0 {
		return min(limit, ttl/2)
	}
	return limit
}

// errInputIdle marks an input stream that sent nothing for
// InputIdleTimeout while the reader waited for it.
var errInputIdle = errors.New("input stream idle")

// readLoop streams the lease's input lines from its progress to its end
// into out, reconnecting (to any coordinator) from the next unread line
// when a stream breaks or goes idle. Each line takes its size from budget
// before it is queued; the main loop gives it back when it takes the line.
// It closes out when done; r.readErr says why it stopped early.
//
// A stream that ends, or goes idle, without a new line counts towards
// readNoProgressMax; one that brings a line resets the count. Other
// retryable failures (no coordinator reachable, no leader) are retried by
// the client until the lease ends, as for every other call.
func (r *leaseRun) readLoop(ctx context.Context, out chan<- numberedLine, budget *byteBudget) {
	defer close(out)
	next, end := r.l.Progress, r.l.EndLine
	noProgress := 0
	defer func() {
		if next < end && r.readErr == nil && ctx.Err() != nil {
			r.readErr = ctx.Err()
		}
	}()
	for next < end && ctx.Err() == nil {
		progressed, stalled := false, false
		err := r.a.coords.call(ctx, "read input", 0, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
			from := next
			err := r.readStream(ctx, c, &next, out, budget)
			progressed = next > from
			if progressed {
				noProgress = 0
			}
			if !errors.Is(err, errInputIdle) || progressed {
				return err
			}
			// An idle stream is retryable, so that the client marks this
			// coordinator bad and reads on from another, unless it is one
			// stream too many without a line.
			if noProgress++; noProgress >= readNoProgressMax {
				stalled = true
				return fmt.Errorf("input stream idle for %s; %d streams in a row brought no line", r.a.cfg.InputIdleTimeout, noProgress)
			}
			return err
		})
		if ctx.Err() != nil {
			return
		}
		switch {
		case stalled || (err != nil && refused(err)):
			r.readErr = fmt.Errorf("chunk %s/%d from line %d: %w", r.l.BatchId, r.l.Chunk, next, err)
			return
		case progressed:
			continue
		}
		noProgress++
		if noProgress >= readNoProgressMax {
			r.readErr = fmt.Errorf("chunk %s/%d: input ended at line %d of %d", r.l.BatchId, r.l.Chunk, next, end)
			return
		}
		sleepCtx(ctx, time.Duration(noProgress)*500*time.Millisecond)
	}
}

// readStream reads one input stream from *next on into out, advancing
// *next past every line it queues. While it waits for a message (and only
// then: not while out or budget hold it back) an idle timer runs; if no
// message comes within InputIdleTimeout the stream is cancelled and
// readStream returns a retryable error wrapping errInputIdle.
func (r *leaseRun) readStream(ctx context.Context, c vbatchv1connect.AgentServiceClient, next *int64, out chan<- numberedLine, budget *byteBudget) error {
	end := r.l.EndLine
	timeout := r.a.cfg.InputIdleTimeout
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The timer runs only while the reader waits on the stream. Its Stop
	// reports false once it has fired: the stream is then cancelled (or
	// about to be), whatever the call that was waiting returned.
	idle := time.AfterFunc(timeout, cancel)
	defer idle.Stop()
	idleErr := func() error {
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("%w: no message for %s", errInputIdle, timeout))
	}
	stream, err := c.ReadInput(streamCtx, connect.NewRequest(&vbatchv1.ReadInputRequest{
		BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token, FromLine: *next,
	}))
	if err != nil {
		if !idle.Stop() {
			return idleErr()
		}
		return err
	}
	defer stream.Close()
	for {
		ok := stream.Receive()
		if !idle.Stop() {
			return idleErr()
		}
		if !ok {
			return stream.Err()
		}
		msg := stream.Msg()
		for i, raw := range msg.Lines {
			n := msg.FirstLine + int64(i)
			if n < *next {
				continue // already have it
			}
			if n > *next || n >= end {
				return fmt.Errorf("input stream sent line %d, want %d (chunk ends at %d)", n, *next, end)
			}
			if err := budget.acquire(ctx, int64(len(raw))); err != nil {
				return err
			}
			select {
			case out <- numberedLine{n: n, raw: raw}:
				*next++
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		idle.Reset(timeout)
	}
}

// byteBudget bounds the input bytes queued between a lease's reader and
// its main loop. It has one taker (the reader) and any number of givers.
type byteBudget struct {
	limit int64
	// freed wakes a taker waiting for room; it holds at most one signal.
	freed chan struct{}

	mu   sync.Mutex
	used int64
}

func newByteBudget(limit int64) *byteBudget {
	return &byteBudget{limit: limit, freed: make(chan struct{}, 1)}
}

// acquire takes n bytes, waiting until they fit under the limit or until
// nothing is queued (so a line larger than the whole budget still goes
// through, alone). It returns ctx's error if ctx ends first.
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.limit {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		b.mu.Unlock()
		select {
		case <-b.freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release gives back n bytes taken by acquire.
func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	select {
	case b.freed <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// renewLoop renews the lease every renew interval until the token is
// dropped. A CANCELLED verdict is passed on (the lease keeps being renewed
// while it winds down); REVOKED, a stale answer, or renewals failing for
// longer than the lease TTL revoke it.
func (r *leaseRun) renewLoop() {
	interval := time.Duration(r.a.renewInterval.Load())
	ttl := time.Duration(r.a.leaseTTL.Load())
	lastOK := time.Now()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-r.tokenCtx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(r.tokenCtx, interval)
		verdict, err := r.renew(ctx)
		cancel()
		if r.tokenCtx.Err() != nil {
			return
		}
		switch {
		case err != nil && (isStale(err) || isNotFound(err)):
			r.log.Warn("renew refused: lease lost", "err", err)
			r.revoke()
			return
		case err != nil:
			if time.Since(lastOK) > ttl {
				r.log.Error("renewals failed for longer than the lease TTL; dropping the lease", "ttl", ttl, "err", err)
				r.revoke()
				return
			}
			r.log.Warn("renew lease", "err", err)
		case verdict == vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED:
			r.log.Warn("lease revoked by coordinator")
			r.revoke()
			return
		case verdict == vbatchv1.LeaseVerdict_LEASE_VERDICT_CANCELLED:
			lastOK = sent
			r.cancel()
		default:
			lastOK = sent
		}
	}
}

// renew makes one Renew call. Each attempt gets a third of the renew
// interval, so a coordinator that hangs (or cannot reach the leader) is
// marked bad and the renewal moves to another within the same interval.
func (r *leaseRun) renew(ctx context.Context) (vbatchv1.LeaseVerdict, error) {
	var verdict vbatchv1.LeaseVerdict
	attempt := max(time.Duration(r.a.renewInterval.Load())/3, 500*time.Millisecond)
	err := r.a.coords.call(ctx, "renew", attempt, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		resp, err := c.Renew(ctx, connect.NewRequest(&vbatchv1.RenewRequest{BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token}))
		if err == nil {
			verdict = resp.Msg.Verdict
		}
		return err
	})
	return verdict, err
}

// putResults commits one part. The part that ends the chunk asks for the
// chunk to be completed with it. It returns the coordinator's answer: the
// chunk's progress after the part, and whether the chunk is now done.
func (r *leaseRun) putResults(p part) (*vbatchv1.PutResultsResponse, error) {
	var out *vbatchv1.PutResultsResponse
	req := &vbatchv1.PutResultsRequest{
		BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token,
		FromLine: p.from, ToLine: p.to,
		Output: p.output, Errors: p.errors,
		Succeeded: p.succeeded, Failed: p.failed,
		Usage:    p.usage,
		Complete: p.to == r.l.EndLine,
	}
	// A part is retried (on any coordinator) for at most one lease TTL:
	// one that keeps failing while renewals succeed (the coordinators
	// cannot store blobs on a quorum) would otherwise hold the lease, and
	// any drain, for ever. The lease is then released as a commit failure.
	ctx, cancel := context.WithTimeout(r.tokenCtx, r.partRetryLimit())
	defer cancel()
	err := r.a.coords.call(ctx, "put results", r.attemptTimeout(putAttemptTimeout), func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		resp, err := c.PutResults(ctx, connect.NewRequest(req))
		if err == nil {
			out = resp.Msg
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("chunk %s/%d lines [%d,%d): %w", r.l.BatchId, r.l.Chunk, p.from, p.to, err)
	}
	return out, nil
}

// complete marks the chunk done.
func (r *leaseRun) complete() error {
	err := r.a.coords.call(r.tokenCtx, "complete", r.attemptTimeout(unaryAttemptTimeout), func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		_, err := c.Complete(ctx, connect.NewRequest(&vbatchv1.CompleteRequest{BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token}))
		return err
	})
	if err != nil {
		return fmt.Errorf("chunk %s/%d: %w", r.l.BatchId, r.l.Chunk, err)
	}
	return nil
}

// release hands the lease back; the chunk keeps its committed progress.
func (r *leaseRun) release(reason string) error {
	return r.sendRelease(&vbatchv1.ReleaseRequest{BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token, Reason: reason})
}

// releaseCrash hands the lease back after the engine crashed under it,
// with the lines started and whether the line at the committed progress
// ran alone.
func (r *leaseRun) releaseCrash(alone bool) error {
	return r.sendRelease(&vbatchv1.ReleaseRequest{BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token,
		Reason: reasonEngineCrash, StartedEnd: r.startedEnd, Alone: alone})
}

// partRetryLimit is how long one part is retried: a lease TTL.
func (r *leaseRun) partRetryLimit() time.Duration {
	if ttl := time.Duration(r.a.leaseTTL.Load()); ttl > 0 {
		return ttl
	}
	return putAttemptTimeout
}

// lateReleaseTimeout bounds a Release sent after the agent's shutdown
// budget for leases ran out, from the time kept for leaving.
const lateReleaseTimeout = 5 * time.Second

// sendRelease sends a Release, trying other coordinators as calls do. A
// lease whose calls were cut off by the end of the agent's life (not by
// losing its token) is still handed back, briefly: that saves the chunk
// waiting out its TTL.
func (r *leaseRun) sendRelease(req *vbatchv1.ReleaseRequest) error {
	parent, limit := r.tokenCtx, 2*unaryAttemptTimeout
	select {
	case <-r.revoked:
	default:
		if r.tokenCtx.Err() != nil {
			parent, limit = context.WithoutCancel(r.tokenCtx), lateReleaseTimeout
		}
	}
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	err := r.a.coords.call(ctx, "release", unaryAttemptTimeout, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		_, err := c.Release(ctx, connect.NewRequest(req))
		return err
	})
	if err != nil {
		return fmt.Errorf("chunk %s/%d release (%s): %w", r.l.BatchId, r.l.Chunk, req.Reason, err)
	}
	return nil
}
