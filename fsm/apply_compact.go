package fsm

import (
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// compactBatch drops the chunk records of a batch that ended: every lease
// is over and its output and error files list every part, so nothing reads
// them any more, while they are most of what a batch weighs in the state
// and every snapshot. Counts, usage, errors and result files stay. The
// leader proposes it a while after the end, so that late retries of an
// agent's last calls still find the parts they would match.
func (a *applyCtx) compactBatch(c *vbatchv1.CompactBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if !IsTerminal(b.Status) {
		return Reject(ErrConflict, "batch %s is %s: only a batch that ended is compacted", b.Id, b.Status)
	}
	b.Chunks = nil
	b.Compacted = true
	return nil
}

// EndedAt is when a batch reached its terminal status (unix seconds), 0 if
// it has not.
func EndedAt(b *vbatchv1.Batch) int64 {
	switch b.Status {
	case statusCompleted:
		return b.CompletedAt
	case statusFailed:
		return b.FailedAt
	case statusExpired:
		return b.ExpiredAt
	case statusCancelled:
		return b.CancelledAt
	}
	return 0
}
