package agent

import (
	"context"
	"fmt"
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

// readLoop streams the lease's input lines from its progress to its end
// into out, reconnecting (to any coordinator) from the next unread line
// when a stream breaks. It closes out when done; r.readErr says why it
// stopped early.
func (r *leaseRun) readLoop(ctx context.Context, out chan<- numberedLine) {
	defer close(out)
	next, end := r.l.Progress, r.l.EndLine
	noProgress := 0
	for next < end && ctx.Err() == nil {
		before := next
		err := r.a.coords.call(ctx, "read input", 0, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
			stream, err := c.ReadInput(ctx, connect.NewRequest(&vbatchv1.ReadInputRequest{
				BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token, FromLine: next,
			}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
				msg := stream.Msg()
				for i, raw := range msg.Lines {
					n := msg.FirstLine + int64(i)
					if n < next {
						continue // already have it
					}
					if n > next || n >= end {
						return fmt.Errorf("input stream sent line %d, want %d (chunk ends at %d)", n, next, end)
					}
					select {
					case out <- numberedLine{n: n, raw: raw}:
						next++
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			return stream.Err()
		})
		if ctx.Err() != nil {
			return
		}
		if err != nil && refused(err) {
			r.readErr = fmt.Errorf("chunk %s/%d from line %d: %w", r.l.BatchId, r.l.Chunk, next, err)
			return
		}
		if next == before {
			noProgress++
			if noProgress >= readNoProgressMax {
				r.readErr = fmt.Errorf("chunk %s/%d: input ended at line %d of %d", r.l.BatchId, r.l.Chunk, next, end)
				return
			}
			sleepCtx(ctx, time.Duration(noProgress)*500*time.Millisecond)
			continue
		}
		noProgress = 0
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
	err := r.a.coords.call(r.tokenCtx, "put results", r.attemptTimeout(putAttemptTimeout), func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
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
	ctx, cancel := context.WithTimeout(r.tokenCtx, 2*unaryAttemptTimeout)
	defer cancel()
	err := r.a.coords.call(ctx, "release", unaryAttemptTimeout, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		_, err := c.Release(ctx, connect.NewRequest(&vbatchv1.ReleaseRequest{BatchId: r.l.BatchId, Chunk: r.l.Chunk, Token: r.l.Token, Reason: reason}))
		return err
	})
	if err != nil {
		return fmt.Errorf("chunk %s/%d release (%s): %w", r.l.BatchId, r.l.Chunk, reason, err)
	}
	return nil
}
