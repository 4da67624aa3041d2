package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/coordinator/validate"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/ids"
	"github.com/vbatch/vbatch/monitoring"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// leaderTick is how often the leader loop looks for work when nothing
// wakes it sooner.
const leaderTick = 200 * time.Millisecond

// leaderMinGap is the least time between two looks, however busy the log.
const leaderMinGap = 50 * time.Millisecond

// agentGrace is how long a new leader waits before treating an agent that
// gossip does not list as gone: gossip may still be settling.
const agentGrace = 3 * time.Second

// leaderLoop does the leader-only work until ctx ends: validate new
// batches, expire leases, finalize, cancel and expire batches, add new
// coordinators to raft; beside it, housekeeping deletes expired files,
// compacts finished batches and forgets long-gone agents.
func (c *Coordinator) leaderLoop(ctx context.Context, term uint64) {
	// A barrier makes sure the FSM holds every committed entry before the
	// loop acts on it.
	for {
		if err := c.raftNode.await(c.raftNode.raft.Barrier(applyTimeout)); err == nil {
			break
		} else if ctx.Err() != nil {
			return
		} else {
			c.log.Warn("leader barrier failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Which leases are given up is judged against the earlier of this
	// node's clock and the FSM's as its predecessors left it (their clock,
	// as of their last command; not whatever this node may have stamped
	// in its own term): a clock ahead of the previous leader's must not
	// take its leases, renewed on that clock, for long expired.
	var ref time.Time
	if fsmNow := c.fsm.NowBefore(term); fsmNow > 0 {
		ref = time.UnixMilli(fsmNow)
	}
	if !c.extendLeases(ctx, term, ref, "leadership") {
		return
	}
	l := &leader{c: c, started: c.Now(), busy: map[string]bool{}, failures: map[string]int{}, chunks: monitoring.NewChunkTracker(c.metrics.Chunks)}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		c.housekeeping(ctx)
	}()
	var members time.Time
	for {
		// A wall clock that stepped forward would expire every lease
		// renewed on the old one: extend them on the new one first.
		if ok, _ := c.clock.check(term, c.Now()); !ok {
			attrs := []any{}
			if ref := c.clock.stepReference(); !ref.IsZero() {
				attrs = append(attrs, "step", c.Now().Round(0).Sub(ref).Round(time.Millisecond).String())
			}
			c.log.Warn("the wall clock stepped forward; extending leases on the new clock", attrs...)
			if !c.extendLeases(ctx, term, c.clock.stepReference(), "clock step") {
				l.wg.Wait()
				return
			}
		}
		watch := c.fsm.Watch()
		if c.Now().Sub(members) > time.Second {
			c.reconcileMembers()
			c.reconcileIncarnations(ctx)
			members = c.Now()
		}
		l.tick(ctx)
		// Under load the state changes hundreds of times a second; one look
		// per leaderMinGap is enough and keeps the leader's CPU flat.
		select {
		case <-ctx.Done():
			l.wg.Wait()
			return
		case <-time.After(leaderMinGap):
		}
		select {
		case <-ctx.Done():
			l.wg.Wait()
			return
		case <-watch:
		case <-c.clock.stepped: // a command saw the clock step: look now
		case <-c.agentGone: // re-queue a dead agent's chunks at once
		case <-time.After(leaderTick - leaderMinGap):
		}
	}
}

// extendLeases gives every live lease a fresh TTL on this leader's clock
// and then opens the clock's gate for term: at the start of a term
// (agents could not renew during the election: they are not punished for
// it) and after the wall clock stepped forward. Leases their agents have
// surely given up are left to expire (an agent drops a lease once its
// renewals, every TTL/3, failed for a TTL: at most about one renew
// interval after it expired), judged against the earlier of this clock
// and ref (zero: this clock alone). It retries until the extension
// commits, and reports false if ctx ended first.
func (c *Coordinator) extendLeases(ctx context.Context, term uint64, ref time.Time, why string) bool {
	for {
		mono, now := c.clock.mono(), c.Now()
		extend := &vbatchv1.ExtendLeases{ExpiresAt: now.Add(c.cfg.LeaseTTL).UnixMilli()}
		if c.clusterAtFSMLevel(fsm.LevelLeaseRequestID) {
			given := now
			if !ref.IsZero() {
				given = minTime(now, ref)
			}
			extend.GoneBefore = given.Add(-c.cfg.LeaseTTL/3 - extendGrace).UnixMilli()
		}
		_, err := c.applyWith(ctx, extend, func(ctx context.Context, data []byte) (*vbatchv1.Result, error) {
			return c.applyHere(ctx, data, gateNone)
		})
		if err == nil {
			c.clock.openFor(term, now, mono)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		c.log.Warn("extending leases failed; retrying", "after", why, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leader holds the leader loop's soft state; it dies with leadership.
type leader struct {
	c       *Coordinator
	started time.Time

	mu sync.Mutex
	// busy marks batches with a validation or expiry running.
	busy map[string]bool
	// failures counts each batch's background work failed in a row: the
	// next try waits longer, up to backgroundRetryMax.
	failures map[string]int
	wg       sync.WaitGroup
	// chunks turns the chunk changes each tick sees into chunk metrics.
	chunks *monitoring.ChunkTracker
}

// work is what one look at the state found to do.
type work struct {
	validate []*vbatchv1.Batch
	expire   []*vbatchv1.Batch
	finalize []string
	finish   []*vbatchv1.FinishBatch
	leases   []*vbatchv1.LeaseRef
	deadAgs  []*vbatchv1.LeaseRef
	// cancelEnds are the leases of cancelling batches past their window.
	cancelEnds []*vbatchv1.LeaseRef
}

func (l *leader) tick(ctx context.Context) {
	c := l.c
	now := c.Now()
	alive := map[string]bool{}
	for _, m := range c.pool.MembersWithRole(gossip.RoleAgent) {
		alive[m.Name] = true
	}
	checkAgents := now.Sub(l.started) > agentGrace
	var w work
	c.fsm.View(func(s *fsm.State) {
		// Only batches that have not ended have work; the chunk tracker
		// forgets the ones that did.
		l.chunks.Retain(func(id string) bool { return !fsm.IsTerminal(s.Batches[id].GetStatus()) })
		l.mu.Lock()
		for id := range l.failures {
			if fsm.IsTerminal(s.Batches[id].GetStatus()) {
				delete(l.failures, id)
			}
		}
		l.mu.Unlock()
		s.LiveBatches(func(b *vbatchv1.Batch) bool {
			l.chunks.Observe(now, b)
			// A batch with every answer (finalizing, or running with every
			// chunk done) completes, late or not.
			done := b.Status == vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING ||
				(b.Status == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS && allDone(b))
			cancelling := b.Status == vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING
			if pastWindow(b, now.Unix()) && cancelling {
				// The user's cancel wins over the window: its leases end
				// now (the batch takes no more results) and it ends
				// cancelled with what was committed, not expired.
				if ends := liveLeaseRefs(b); len(ends) > 0 {
					w.cancelEnds = append(w.cancelEnds, ends...)
				} else {
					w.finish = append(w.finish, l.finishCmd(b, vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED))
				}
				return true
			}
			if pastWindow(b, now.Unix()) && !done {
				w.expire = append(w.expire, proto.Clone(b).(*vbatchv1.Batch))
				return true
			}
			switch b.Status {
			case vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING:
				w.validate = append(w.validate, proto.Clone(b).(*vbatchv1.Batch))
			case vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS:
				if allDone(b) {
					w.finalize = append(w.finalize, b.Id)
				}
			case vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING:
				w.finish = append(w.finish, l.finishCmd(b, vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED))
			case vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING:
				if !anyLive(b, now.UnixMilli()) {
					w.finish = append(w.finish, l.finishCmd(b, vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED))
				}
			}
			for _, ch := range b.Chunks {
				if ch.State != vbatchv1.ChunkState_CHUNK_STATE_LEASED || ch.Lease == nil {
					continue
				}
				ref := &vbatchv1.LeaseRef{BatchId: b.Id, Chunk: ch.Index, Token: ch.Lease.Token}
				switch {
				case ch.Lease.ExpiresAt <= now.UnixMilli():
					w.leases = append(w.leases, ref)
				case checkAgents && !alive[ch.Lease.AgentId]:
					w.deadAgs = append(w.deadAgs, ref)
				}
			}
			return true
		})
	})
	if len(w.leases) > 0 {
		l.apply(ctx, &vbatchv1.ExpireLeases{Leases: w.leases, Reason: "lease expired"})
	}
	if len(w.deadAgs) > 0 {
		l.apply(ctx, &vbatchv1.ExpireLeases{Leases: w.deadAgs, Reason: "agent declared dead by gossip"})
	}
	if len(w.cancelEnds) > 0 {
		l.apply(ctx, &vbatchv1.ExpireLeases{Leases: w.cancelEnds, Reason: "batch cancelled past its window"})
	}
	for _, id := range w.finalize {
		l.apply(ctx, &vbatchv1.BeginFinalize{BatchId: id})
	}
	for _, cmd := range w.finish {
		l.apply(ctx, cmd)
	}
	for _, b := range w.validate {
		l.background(ctx, b.Id, func(ctx context.Context) error { return l.validate(ctx, b) })
	}
	for _, b := range w.expire {
		l.background(ctx, b.Id, func(ctx context.Context) error { return l.expire(ctx, b) })
	}
}

// apply proposes a leader command (on this node only: applyAsLeader);
// rejections are expected when the state moved on (another tick, an
// agent's write) and are only logged at debug. It returns the error.
func (l *leader) apply(ctx context.Context, cmd proto.Message) error {
	_, err := l.c.applyAsLeader(ctx, cmd)
	if err == nil {
		return nil
	}
	attrs := []any{"cmd", fmt.Sprintf("%T", cmd), "err", err}
	if b, ok := cmd.(interface{ GetBatchId() string }); ok && b.GetBatchId() != "" {
		attrs = append(attrs, "batch_id", b.GetBatchId())
	}
	switch {
	case refusal(err):
		l.c.log.DebugContext(ctx, "leader command refused", attrs...)
	default:
		l.c.log.WarnContext(ctx, "leader command failed", attrs...)
	}
	return err
}

// backgroundRetryMax caps the pause before a batch's failed background
// work is tried again.
const backgroundRetryMax = time.Minute

// refusal reports whether err is the FSM refusing a command because the
// state moved on, or this node no longer leading: expected, not a fault.
func refusal(err error) bool {
	return errors.Is(err, fsm.ErrConflict) || errors.Is(err, fsm.ErrStaleToken) || errors.Is(err, fsm.ErrNotFound) || errors.Is(err, errNotLeading)
}

// background runs fn for a batch unless one is already running for it.
func (l *leader) background(ctx context.Context, batchID string, fn func(context.Context) error) {
	l.mu.Lock()
	if l.busy[batchID] {
		l.mu.Unlock()
		return
	}
	l.busy[batchID] = true
	l.mu.Unlock()
	ctx = monitoring.WithBatchID(ctx, batchID)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			delete(l.busy, batchID)
			l.mu.Unlock()
		}()
		err := fn(ctx)
		l.mu.Lock()
		if err == nil {
			delete(l.failures, batchID)
		} else {
			l.failures[batchID]++
		}
		n := l.failures[batchID]
		l.mu.Unlock()
		if err == nil || ctx.Err() != nil {
			return
		}
		// An input that cannot be read, or an expiry refused again and
		// again, must not have the leader read the input several times a
		// second: each failure in a row doubles the pause.
		wait := min(time.Second<<min(n-1, 6), backgroundRetryMax)
		if refusal(err) {
			l.c.log.Debug("batch work refused; will retry", "batch_id", batchID, "err", err, "retry_in", wait)
		} else {
			l.c.log.Warn("batch work failed; will retry", "batch_id", batchID, "err", err, "retry_in", wait)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}()
}

func (l *leader) finishCmd(b *vbatchv1.Batch, status vbatchv1.BatchStatus) *vbatchv1.FinishBatch {
	return &vbatchv1.FinishBatch{
		BatchId:      b.Id,
		Status:       status,
		OutputFileId: ids.New("file-"),
		ErrorFileId:  ids.New("file-"),
	}
}

// validate reads a validating batch's input, then starts or fails it.
func (l *leader) validate(ctx context.Context, b *vbatchv1.Batch) error {
	c := l.c
	input := c.file(b.InputFileId)
	if input == nil {
		l.apply(ctx, &vbatchv1.FailBatch{BatchId: b.Id, Errors: []*vbatchv1.BatchError{{
			Code: "invalid_file", Param: "input_file_id", Message: fmt.Sprintf("Input file %s no longer exists.", b.InputFileId),
		}}})
		return nil
	}
	res, err := l.validateInput(ctx, input, b.Endpoint)
	if err != nil {
		return err
	}
	if len(res.Errors) > 0 {
		l.apply(ctx, &vbatchv1.FailBatch{BatchId: b.Id, Errors: res.Errors})
		return nil
	}
	chunks := make([]*vbatchv1.Chunk, len(res.Chunks))
	for i, ch := range res.Chunks {
		chunks[i] = &vbatchv1.Chunk{
			Index: uint32(i), StartLine: ch.StartLine, EndLine: ch.EndLine,
			StartOffset: ch.StartOffset, EndOffset: ch.EndOffset,
		}
	}
	l.apply(ctx, &vbatchv1.StartBatch{BatchId: b.Id, Model: res.Model, Total: res.Total, Chunks: chunks})
	return nil
}

// validateInput validates a batch's input file for endpoint: from the check
// recorded when the file was uploaded if it applies, else by reading it.
func (l *leader) validateInput(ctx context.Context, input *vbatchv1.File, endpoint string) (*validate.Result, error) {
	c := l.c
	opts := c.cfg.validateOpts()
	if res, ok := validate.FromCheck(input.Check, endpoint, opts); ok {
		return res, nil
	}
	rc, err := c.OpenFile(ctx, input)
	if err != nil {
		return nil, fmt.Errorf("open input %s: %w", input.Id, err)
	}
	defer rc.Close()
	res, err := validate.Validate(rc, endpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("validate input %s: %w", input.Id, err)
	}
	return res, nil
}

// expire writes a batch_expired error line for every request that never
// ran and ends the batch as expired. The command carries the progress the
// lines were computed from, so a part committed meanwhile makes the FSM
// refuse it and the next tick tries again: no line lands twice.
func (l *leader) expire(ctx context.Context, b *vbatchv1.Batch) error {
	// Past its window the batch takes no more results: its leases end
	// first (and no new ones are granted), so the progress the expired
	// lines are computed from holds still, and the next look expires it.
	if live := liveLeaseRefs(b); len(live) > 0 {
		return l.apply(ctx, &vbatchv1.ExpireLeases{Leases: live, Reason: "batch expired"})
	}
	cmd := l.finishCmd(b, vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED)
	// Said explicitly, an empty expected progress (a batch still
	// validating) is checked too: if StartBatch commits before this
	// command, the command is refused instead of expiring a batch with
	// chunks and no batch_expired line for any of them.
	cmd.ProgressGiven = l.c.clusterAtFSMLevel(fsm.LevelExpiryChecks)
	if len(b.Chunks) > 0 {
		ranges := make([][2]int64, 0, len(b.Chunks))
		for _, ch := range b.Chunks {
			cmd.ExpectedProgress = append(cmd.ExpectedProgress, ch.Progress)
			if ch.State != vbatchv1.ChunkState_CHUNK_STATE_DONE && ch.Progress < ch.EndLine {
				ranges = append(ranges, [2]int64{ch.Progress, ch.EndLine})
			}
		}
		if len(ranges) > 0 {
			ref, n, err := l.expiredLines(ctx, b, ranges)
			if err != nil {
				return err
			}
			cmd.ExtraErrors, cmd.ExtraFailed = ref, n
		}
	}
	// Refused when the progress moved after all (a part applied between
	// the look and now): the next try, after a pause, computes again.
	return l.apply(ctx, cmd)
}

// extendGrace is the margin, past one renew interval, within which an
// expired lease's agent may still hold it when a new leader extends leases.
const extendGrace = 5 * time.Second

// expiredLines streams the batch_expired lines of the given input line
// ranges into a replicated blob.
func (l *leader) expiredLines(ctx context.Context, b *vbatchv1.Batch, ranges [][2]int64) (*vbatchv1.BlobRef, int64, error) {
	c := l.c
	input := c.file(b.InputFileId)
	if input == nil {
		return nil, 0, fmt.Errorf("input file %s gone", b.InputFileId)
	}
	rc, err := c.OpenFile(ctx, input)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	pr, pw := io.Pipe()
	// The scan reads rc until it returns: every return below waits for it
	// first (rc's buffers go back to a pool on Close), and a failed store
	// makes its next read fail rather than scan on to the end.
	var n int64
	var stop atomic.Bool
	done := make(chan struct{})
	defer func() {
		stop.Store(true)
		pr.CloseWithError(errScanStopped)
		<-done
	}()
	go func() {
		defer close(done)
		seq := 0
		src := stoppableReader{r: rc, stop: &stop}
		err := validate.ScanCustomIDs(src, ranges[0][0], ranges[len(ranges)-1][1], expiryLineCap(c.cfg.MaxLineBytes, input.Bytes), func(line int64, customID string) {
			for _, r := range ranges {
				if line >= r[0] && line < r[1] {
					seq++
					n++
					if _, err := pw.Write(validate.ExpiredLine(b.Id, customID, seq)); err != nil {
						return
					}
					return
				}
			}
		})
		pw.CloseWithError(err)
	}()
	ref, err := c.blobs.Ingest(pr)
	if err != nil {
		return nil, 0, fmt.Errorf("store expired lines: %w", err)
	}
	<-done // the scan wrote its last line before the pipe's EOF; n is final
	if _, err := c.replicate(ctx, ref.Sha256); err != nil {
		return nil, 0, err
	}
	return ref, n, nil
}

// expiryLineCap is the longest line the expiry scan of an input of
// fileBytes accepts. The lines were validated when the batch started,
// perhaps under a larger --max-line-bytes than this coordinator's (a
// setting lowered since, or a leader whose flags differ): refusing a line
// validation accepted would leave the batch unable to expire, for ever.
// So the cap is the file's size; the scan's buffer grows only to the
// longest line actually read, which validation bounded.
func expiryLineCap(configured int, fileBytes int64) int {
	return max(configured, validate.DefaultMaxLineBytes, int(min(fileBytes, math.MaxInt32)))
}

// errScanStopped ends a scan whose output is no longer wanted.
var errScanStopped = errors.New("scan stopped")

// stoppableReader fails every read once stop is set.
type stoppableReader struct {
	r    io.Reader
	stop *atomic.Bool
}

func (s stoppableReader) Read(p []byte) (int, error) {
	if s.stop.Load() {
		return 0, errScanStopped
	}
	return s.r.Read(p)
}

// pastWindow reports whether b's completion window has ended at nowSec
// (unix seconds): it then takes no more leases, and the leader expires it.
func pastWindow(b *vbatchv1.Batch, nowSec int64) bool {
	return b.ExpiresAt > 0 && nowSec >= b.ExpiresAt
}

// liveLeaseRefs names every lease b's chunks hold.
func liveLeaseRefs(b *vbatchv1.Batch) []*vbatchv1.LeaseRef {
	var out []*vbatchv1.LeaseRef
	for _, ch := range b.Chunks {
		if ch.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED && ch.Lease != nil {
			out = append(out, &vbatchv1.LeaseRef{BatchId: b.Id, Chunk: ch.Index, Token: ch.Lease.Token})
		}
	}
	return out
}

func allDone(b *vbatchv1.Batch) bool {
	for _, ch := range b.Chunks {
		if ch.State != vbatchv1.ChunkState_CHUNK_STATE_DONE {
			return false
		}
	}
	return true
}

func anyLive(b *vbatchv1.Batch, nowMs int64) bool {
	for _, ch := range b.Chunks {
		if ch.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED && fsm.LiveLease(ch, nowMs) {
			return true
		}
	}
	return false
}

// referencedBlobs is every blob the state refers to.
func (c *Coordinator) referencedBlobs() map[string]struct{} {
	var refs map[string]struct{}
	c.fsm.View(func(s *fsm.State) { refs = fsm.ReferencedBlobs(s) })
	return refs
}

// file returns a copy of a file record, or nil.
func (c *Coordinator) file(id string) *vbatchv1.File {
	var out *vbatchv1.File
	c.fsm.View(func(s *fsm.State) {
		if f, ok := s.Files[id]; ok {
			out = proto.Clone(f).(*vbatchv1.File)
		}
	})
	return out
}

// minTime is the earlier of a and b.
func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
