package fsm

import (
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// chunkOf returns a copy of the batch and the chunk within it.
func (a *applyCtx) chunkOf(batchID string, idx uint32) (*vbatchv1.Batch, *vbatchv1.Chunk, error) {
	b, err := a.batch(batchID)
	if err != nil {
		return nil, nil, err
	}
	if int(idx) >= len(b.Chunks) {
		return nil, nil, Reject(ErrNotFound, "batch %s has no chunk %d", batchID, idx)
	}
	return b, b.Chunks[idx], nil
}

// liveToken checks that token is the chunk's live lease.
func (a *applyCtx) liveToken(b *vbatchv1.Batch, ch *vbatchv1.Chunk, token uint64) error {
	if ch.State != chLeased || ch.Lease == nil || ch.Lease.Token != token {
		return Reject(ErrStaleToken, "batch %s chunk %d: token %d is not the live lease", b.Id, ch.Index, token)
	}
	if ch.Lease.ExpiresAt <= a.ms() {
		return Reject(ErrStaleToken, "batch %s chunk %d: lease %d expired", b.Id, ch.Index, token)
	}
	return nil
}

// endLease returns a leased chunk to pending; its progress stays.
func endLease(ch *vbatchv1.Chunk) {
	if ch.State == chLeased {
		ch.State = chPending
	}
	ch.Lease = nil
}

func (a *applyCtx) grantLease(c *vbatchv1.GrantLease) error {
	b, ch, err := a.chunkOf(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if b.Status != stInProgress {
		return Reject(ErrConflict, "batch %s is %s", b.Id, StatusName(b.Status))
	}
	ag, ok := a.s.Agents[c.AgentId]
	if !ok {
		return Reject(ErrNotFound, "agent %s is not registered", c.AgentId)
	}
	if ag.Draining {
		return Reject(ErrConflict, "agent %s is draining", c.AgentId)
	}
	switch {
	case ch.State == chPending:
	case ch.State == chLeased && !LiveLease(ch, a.ms()):
	default:
		return Reject(ErrConflict, "batch %s chunk %d is not available", b.Id, ch.Index)
	}
	if c.ExpiresAt <= a.ms() {
		return Reject(ErrInvalid, "lease would expire at once")
	}
	ch.State = chLeased
	ch.Attempts++
	ch.Lease = &vbatchv1.Lease{AgentId: c.AgentId, Token: a.index, GrantedAt: a.ms(), ExpiresAt: c.ExpiresAt}
	a.commit(b)
	return nil
}

func (a *applyCtx) renewLease(c *vbatchv1.RenewLease) error {
	b, ch, err := a.chunkOf(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if b.Status != stInProgress && b.Status != stCancelling {
		return Reject(ErrStaleToken, "batch %s is %s", b.Id, StatusName(b.Status))
	}
	if err := a.liveToken(b, ch, c.Token); err != nil {
		return err
	}
	if c.ExpiresAt > ch.Lease.ExpiresAt {
		ch.Lease.ExpiresAt = c.ExpiresAt
	}
	a.commit(b)
	return nil
}

func (a *applyCtx) commitPart(c *vbatchv1.CommitPart) error {
	b, ch, err := a.chunkOf(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	p := c.GetPart()
	if p == nil {
		return Reject(ErrInvalid, "commit without a part")
	}
	for _, old := range ch.Parts {
		if old.Token == p.Token && old.FromLine == p.FromLine && old.ToLine == p.ToLine {
			return nil // a retried commit that already landed
		}
	}
	if b.Status != stInProgress && b.Status != stCancelling {
		return Reject(ErrStaleToken, "batch %s is %s", b.Id, StatusName(b.Status))
	}
	if err := a.liveToken(b, ch, p.Token); err != nil {
		return err
	}
	if p.FromLine != ch.Progress {
		return Reject(ErrConflict, "batch %s chunk %d: part starts at line %d, progress is %d", b.Id, ch.Index, p.FromLine, ch.Progress)
	}
	if p.ToLine <= p.FromLine || p.ToLine > ch.EndLine {
		return Reject(ErrInvalid, "batch %s chunk %d: part [%d,%d) outside [%d,%d)", b.Id, ch.Index, p.FromLine, p.ToLine, ch.Progress, ch.EndLine)
	}
	if p.Succeeded < 0 || p.Failed < 0 || p.Succeeded+p.Failed != p.ToLine-p.FromLine {
		return Reject(ErrInvalid, "batch %s chunk %d: %d+%d results for %d lines", b.Id, ch.Index, p.Succeeded, p.Failed, p.ToLine-p.FromLine)
	}
	ch.Parts = append(ch.Parts, proto.Clone(p).(*vbatchv1.Part))
	ch.Progress = p.ToLine
	b.RequestCounts.Completed += p.Succeeded
	b.RequestCounts.Failed += p.Failed
	if u := c.GetUsage(); u != nil {
		b.Usage.InputTokens += u.InputTokens
		b.Usage.OutputTokens += u.OutputTokens
		b.Usage.TotalTokens += u.TotalTokens
		b.Usage.CachedTokens += u.CachedTokens
		b.Usage.ReasoningTokens += u.ReasoningTokens
	}
	a.commit(b)
	return nil
}

func (a *applyCtx) completeChunk(c *vbatchv1.CompleteChunk) error {
	b, ch, err := a.chunkOf(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if ch.State == chDone && ch.Lease != nil && ch.Lease.Token == c.Token {
		return nil
	}
	if b.Status != stInProgress && b.Status != stCancelling {
		return Reject(ErrStaleToken, "batch %s is %s", b.Id, StatusName(b.Status))
	}
	if err := a.liveToken(b, ch, c.Token); err != nil {
		return err
	}
	if ch.Progress != ch.EndLine {
		return Reject(ErrConflict, "batch %s chunk %d: committed to line %d of %d", b.Id, ch.Index, ch.Progress, ch.EndLine)
	}
	ch.State = chDone
	a.commit(b)
	return nil
}

func (a *applyCtx) releaseLease(c *vbatchv1.ReleaseLease) error {
	b, ch, err := a.chunkOf(c.BatchId, c.Chunk)
	if err != nil {
		return err
	}
	if ch.State != chLeased || ch.Lease == nil || ch.Lease.Token != c.Token {
		return Reject(ErrStaleToken, "batch %s chunk %d: token %d is not the current lease", b.Id, ch.Index, c.Token)
	}
	endLease(ch)
	a.commit(b)
	return nil
}

func (a *applyCtx) expireLeases(c *vbatchv1.ExpireLeases) error {
	for _, ref := range c.Leases {
		b, ok := a.s.Batches[ref.BatchId]
		if !ok || int(ref.Chunk) >= len(b.Chunks) {
			continue
		}
		ch := b.Chunks[ref.Chunk]
		if ch.State == chLeased && ch.Lease != nil && ch.Lease.Token == ref.Token {
			endLease(ch)
		}
	}
	return nil
}

func (a *applyCtx) extendLeases(c *vbatchv1.ExtendLeases) error {
	for _, b := range a.s.Batches {
		if IsTerminal(b.Status) {
			continue
		}
		for _, ch := range b.Chunks {
			if ch.State == chLeased && ch.Lease != nil && ch.Lease.ExpiresAt < c.ExpiresAt {
				ch.Lease.ExpiresAt = c.ExpiresAt
			}
		}
	}
	return nil
}
