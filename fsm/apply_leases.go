package fsm

import (
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Lease commands are fenced by the lease's token, the raft index of the
// GrantLease entry: a holder whose lease was expired, released or granted
// to someone else is refused with ErrStaleToken. Part and completion
// commands are idempotent, because a proposer cannot tell whether a write
// that lost leadership was committed.
//
// Lease times (granted_at, expires_at) are unix milliseconds.

// chunk finds a chunk of a batch; StartBatch numbers chunks by position.
func (a *applyCtx) chunk(batchID string, index uint32) (*vbatchv1.Batch, *vbatchv1.Chunk, error) {
	b, err := a.batch(batchID)
	if err != nil {
		return nil, nil, err
	}
	if int(index) >= len(b.Chunks) {
		return nil, nil, Reject(ErrNotFound, "batch %s has no chunk %d", batchID, index)
	}
	return b, b.Chunks[index], nil
}

// endLease hands a leased chunk back: it becomes pending with its
// committed progress kept.
func endLease(ch *vbatchv1.Chunk) {
	ch.Lease = nil
	if ch.State == chunkLeased {
		ch.State = chunkPending
	}
}

// GrantedTo finds the live lease that agentID's lease attempt requestID
// was granted, if any: the answer to a Lease call the agent never
// received. It walks the chunks of the batches that are running or being
// cancelled.
func GrantedTo(s *State, agentID, requestID string) (b *vbatchv1.Batch, ch *vbatchv1.Chunk, ok bool) {
	if requestID == "" {
		return nil, nil, false
	}
	s.LiveBatches(func(lb *vbatchv1.Batch) bool {
		if !leaseWritable(lb) {
			return true
		}
		for _, c := range lb.Chunks {
			if l := c.Lease; l != nil && l.RequestId == requestID && l.AgentId == agentID && LiveLease(c, s.Now) {
				b, ch, ok = lb, c, true
				return false
			}
		}
		return true
	})
	return b, ch, ok
}

// holds reports whether token is the chunk's lease and the lease is live.
func (a *applyCtx) holds(ch *vbatchv1.Chunk, token uint64) bool {
	return LiveLease(ch, a.nowMs) && ch.Lease.Token == token
}

// leaseWritable reports whether the holder of a lease on b may still
// write: while the batch runs, and while it is being cancelled (parts
// committed until the agent notices are kept).
func leaseWritable(b *vbatchv1.Batch) bool {
	return b.Status == statusInProgress || b.Status == statusCancelling
}

func (a *applyCtx) grantLease(c *vbatchv1.GrantLease) error {
	b, ch, err := a.chunk(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if LiveLease(ch, a.nowMs) && ch.Lease.AgentId == c.AgentId && ch.Lease.Token == a.index {
		return nil // this very entry, applied again
	}
	if b.Status != statusInProgress {
		return Reject(ErrConflict, "batch %s is %s, not in progress", b.Id, b.Status)
	}
	if c.WithinWindow && b.ExpiresAt > 0 && a.sec() >= b.ExpiresAt {
		return Reject(ErrConflict, "batch %s: its window ended at %d, now is %d", b.Id, b.ExpiresAt, a.sec())
	}
	switch {
	case ch.State == chunkDone:
		return Reject(ErrConflict, "chunk %s/%d is done", b.Id, ch.Index)
	case LiveLease(ch, a.nowMs):
		return Reject(ErrConflict, "chunk %s/%d is leased to %s", b.Id, ch.Index, ch.Lease.AgentId)
	}
	ag, ok := a.s.Agents[c.AgentId]
	if !ok {
		return Reject(ErrNotFound, "agent %s", c.AgentId)
	}
	if ag.Draining {
		return Reject(ErrConflict, "agent %s is draining", c.AgentId)
	}
	expires, err := a.leaseExpiry(c.TtlMs, c.ExpiresAt)
	if err != nil {
		return err
	}
	if expires <= a.nowMs {
		return Reject(ErrInvalid, "lease on %s/%d would expire at %d, before now %d", b.Id, ch.Index, expires, a.nowMs)
	}
	ch.Lease = &vbatchv1.Lease{AgentId: c.AgentId, Token: a.index, GrantedAt: a.nowMs, ExpiresAt: expires, RequestId: c.RequestId}
	ch.State = chunkLeased
	ch.Attempts++
	return nil
}

func (a *applyCtx) renewLease(c *vbatchv1.RenewLease) error {
	b, ch, err := a.chunk(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if !leaseWritable(b) {
		return Reject(ErrConflict, "batch %s is %s", b.Id, b.Status)
	}
	if !a.holds(ch, c.Token) {
		return Reject(ErrStaleToken, "chunk %s/%d: token %d holds no live lease", b.Id, ch.Index, c.Token)
	}
	expires, err := a.leaseExpiry(c.TtlMs, c.ExpiresAt)
	if err != nil {
		return err
	}
	ch.Lease.ExpiresAt = max(ch.Lease.ExpiresAt, expires)
	return nil
}

// MaxLeaseTTL bounds a lease's time to live: a longer one is a proposer's
// bug, and would strand a chunk whose agent died unseen. Coordinators
// refuse a --lease-ttl above it.
const MaxLeaseTTL = 24 * time.Hour

const maxLeaseTTLMs = int64(MaxLeaseTTL / time.Millisecond)

// leaseExpiry is when a granted or renewed lease ends: ttlMs after the
// command's time when given (FSM level 8: the leader's clock alone decides,
// however far the proposing coordinator's clock is off), else the
// proposer's absolute expiresAt.
func (a *applyCtx) leaseExpiry(ttlMs, expiresAt int64) (int64, error) {
	switch {
	case ttlMs == 0:
		return expiresAt, nil
	case ttlMs < 0 || ttlMs > maxLeaseTTLMs:
		return 0, Reject(ErrInvalid, "lease time to live %d ms is out of range", ttlMs)
	}
	return a.nowMs + ttlMs, nil
}

func (a *applyCtx) commitPart(c *vbatchv1.CommitPart) error { return a.commitPartThen(c, false) }

// completePart commits the part that ends a chunk and marks the chunk done.
func (a *applyCtx) completePart(c *vbatchv1.CompletePart) error {
	if c.GetCommit() == nil {
		return Reject(ErrInvalid, "complete part without a part")
	}
	return a.commitPartThen(c.Commit, true)
}

// commitPartThen commits c's part and, when complete is set, marks the
// chunk done in the same step; such a part must end the chunk.
func (a *applyCtx) commitPartThen(c *vbatchv1.CommitPart, complete bool) error {
	b, ch, err := a.chunk(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	p := c.GetPart()
	if p == nil {
		return Reject(ErrInvalid, "chunk %s/%d: commit without a part", b.Id, ch.Index)
	}
	for _, old := range ch.Parts {
		if old.FromLine == p.FromLine && old.ToLine == p.ToLine && old.Token == p.Token {
			return nil // a re-applied commit
		}
	}
	if !leaseWritable(b) {
		return Reject(ErrConflict, "batch %s is %s", b.Id, b.Status)
	}
	if !a.holds(ch, p.Token) {
		return Reject(ErrStaleToken, "chunk %s/%d: token %d holds no live lease", b.Id, ch.Index, p.Token)
	}
	switch {
	case p.FromLine != ch.Progress:
		return Reject(ErrConflict, "chunk %s/%d: part starts at line %d, progress is %d", b.Id, ch.Index, p.FromLine, ch.Progress)
	case p.ToLine <= p.FromLine || p.ToLine > ch.EndLine:
		return Reject(ErrInvalid, "chunk %s/%d: part [%d,%d) outside (%d,%d]", b.Id, ch.Index, p.FromLine, p.ToLine, p.FromLine, ch.EndLine)
	case p.Succeeded < 0 || p.Failed < 0 || p.Succeeded+p.Failed != p.ToLine-p.FromLine:
		return Reject(ErrInvalid, "chunk %s/%d: part [%d,%d) counts %d succeeded and %d failed", b.Id, ch.Index, p.FromLine, p.ToLine, p.Succeeded, p.Failed)
	case complete && p.ToLine != ch.EndLine:
		return Reject(ErrInvalid, "chunk %s/%d: part [%d,%d) cannot complete a chunk that ends at %d", b.Id, ch.Index, p.FromLine, p.ToLine, ch.EndLine)
	}
	ch.Parts = append(ch.Parts, proto.Clone(p).(*vbatchv1.Part))
	advance(ch, p.ToLine)
	b.RequestCounts.Completed += p.Succeeded
	b.RequestCounts.Failed += p.Failed
	AddUsage(b.Usage, c.Usage)
	if complete {
		// As completeChunk: the finished lease stays on the chunk.
		ch.State = chunkDone
	}
	return nil
}

func (a *applyCtx) completeChunk(c *vbatchv1.CompleteChunk) error {
	b, ch, err := a.chunk(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if ch.State == chunkDone && ch.Lease != nil && ch.Lease.Token == c.Token {
		return nil // a re-applied completion
	}
	if !leaseWritable(b) {
		return Reject(ErrConflict, "batch %s is %s", b.Id, b.Status)
	}
	if !a.holds(ch, c.Token) {
		return Reject(ErrStaleToken, "chunk %s/%d: token %d holds no live lease", b.Id, ch.Index, c.Token)
	}
	if ch.Progress != ch.EndLine {
		return Reject(ErrConflict, "chunk %s/%d: progress %d, the chunk ends at %d", b.Id, ch.Index, ch.Progress, ch.EndLine)
	}
	// The finished lease stays on the chunk so that a re-applied
	// completion with its token is recognised.
	ch.State = chunkDone
	return nil
}

func (a *applyCtx) releaseLease(c *vbatchv1.ReleaseLease) error {
	b, ch, err := a.chunk(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if ch.State != chunkLeased || ch.Lease.GetToken() != c.Token {
		return Reject(ErrStaleToken, "chunk %s/%d: token %d is not its lease", b.Id, ch.Index, c.Token)
	}
	if c.Reason == ReleaseEngineCrash {
		countCrash(ch, c)
	}
	endLease(ch)
	return nil
}

// ReleaseEngineCrash is the release reason of a lease whose engine died
// under its requests.
const ReleaseEngineCrash = "engine_crash"

// ReleaseUnclaimed is the release reason of a lease whose grant never
// reached its agent (the answer was lost) and whose batch is being
// cancelled: the coordinator hands it back for the agent.
const ReleaseUnclaimed = "unclaimed"

// Crash limits. A chunk whose engine crashed IsolateAfterCrashes times
// under the same started lines has them run one at a time (the lease's
// isolate_until); a line that crashes the engine alone
// HeadCrashLimit times is failed instead of run again.
const (
	IsolateAfterCrashes = 2
	HeadCrashLimit      = 2
)

// countCrash records a release for an engine crash. A crash while the line
// at progress ran alone counts against that line; any other counts against
// the lines started, [progress, started_end). Releases without the crash
// fields (from a cluster below LevelCrashCounts) count nothing.
func countCrash(ch *vbatchv1.Chunk, c *vbatchv1.ReleaseLease) {
	end := min(c.StartedEnd, ch.EndLine)
	switch {
	case ch.Progress >= ch.EndLine:
		// Every line is committed: nothing left to suspect.
	case c.Alone:
		ch.HeadCrashes++
		if agent := ch.Lease.GetAgentId(); !slices.Contains(ch.HeadCrashAgents, agent) {
			ch.HeadCrashAgents = append(ch.HeadCrashAgents, agent)
		}
	case end > ch.Progress:
		ch.Crashes++
		ch.CrashWindowEnd = max(ch.CrashWindowEnd, end)
	}
}

// advance moves a chunk's progress to line. The head line changed, so its
// crash count restarts; once progress passes every line that was started
// at the counted crashes, they are forgotten.
func advance(ch *vbatchv1.Chunk, line int64) {
	if line != ch.Progress {
		ch.HeadCrashes, ch.HeadCrashAgents = 0, nil
	}
	ch.Progress = line
	if line >= ch.CrashWindowEnd {
		ch.Crashes, ch.CrashWindowEnd = 0, 0
	}
}

// Isolation returns the lease advice for a chunk granted to agent: the
// exclusive end of the lines to run one at a time (0 when none) and how
// often the line at progress crashed the engine alone, as that agent is to
// count it. Where other agents serve the model (othersServe), crashes count
// once per distinct agent other than this one: an agent whose engine dies
// under every request (a failing GPU) cannot condemn a line on its own, and
// its own earlier crash never counts against its next run.
func Isolation(ch *vbatchv1.Chunk, agent string, othersServe bool) (isolateUntil int64, headCrashes uint32) {
	if ch.Crashes >= IsolateAfterCrashes && ch.CrashWindowEnd > ch.Progress {
		isolateUntil = ch.CrashWindowEnd
	}
	if ch.HeadCrashes > 0 {
		// The line at progress crashed the engine alone: it stays isolated.
		isolateUntil = max(isolateUntil, ch.Progress+1)
	}
	if !othersServe {
		return isolateUntil, ch.HeadCrashes
	}
	for _, a := range ch.HeadCrashAgents {
		if a != agent {
			headCrashes++
		}
	}
	return isolateUntil, headCrashes
}

// AvoidFor reports whether agent should not be granted the chunk while
// other agents serve its model: its own engine is the only one that
// crashed under the line at progress, alone. Another agent's run tells
// whether the line or the engine is to blame.
func AvoidFor(ch *vbatchv1.Chunk, agent string, othersServe bool) bool {
	return othersServe && ch.HeadCrashes > 0 && len(ch.HeadCrashAgents) == 1 && ch.HeadCrashAgents[0] == agent
}

// expireLeases ends the named leases. A ref whose lease already ended or
// changed hands is skipped: the leader's view was older than the log.
func (a *applyCtx) expireLeases(c *vbatchv1.ExpireLeases) error {
	for _, ref := range c.Leases {
		_, ch, err := a.chunk(ref.BatchId, ref.Chunk)
		if err != nil {
			continue
		}
		if ch.State == chunkLeased && ch.Lease.GetToken() == ref.Token {
			endLease(ch)
		}
	}
	return nil
}

// extendLeases pushes every lease's expiry to at least c.ExpiresAt. A new
// leader issues it: agents could not renew during the election.
func (a *applyCtx) extendLeases(c *vbatchv1.ExtendLeases) error {
	a.s.LiveBatches(func(b *vbatchv1.Batch) bool {
		for _, ch := range b.Chunks {
			if ch.State == chunkLeased && ch.Lease != nil && ch.Lease.ExpiresAt > c.GoneBefore {
				ch.Lease.ExpiresAt = max(ch.Lease.ExpiresAt, c.ExpiresAt)
			}
		}
		return true
	})
	return nil
}

// AddUsage adds u to sum (a nil u adds nothing). Parts' usage sums into
// the batch's with it, and agents sum a part's requests with it.
func AddUsage(sum, u *vbatchv1.Usage) {
	if u == nil {
		return
	}
	sum.InputTokens += u.InputTokens
	sum.OutputTokens += u.OutputTokens
	sum.TotalTokens += u.TotalTokens
	sum.CachedTokens += u.CachedTokens
	sum.ReasoningTokens += u.ReasoningTokens
}
