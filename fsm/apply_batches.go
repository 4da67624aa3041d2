package fsm

import (
	"maps"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// batch finds a batch by id.
func (a *applyCtx) batch(id string) (*vbatchv1.Batch, error) {
	b, ok := a.s.Batches[id]
	if !ok {
		return nil, Reject(ErrNotFound, "batch %s", id)
	}
	return b, nil
}

// ownBatch finds a batch by id within project; an empty project is an
// admin and sees every project.
func (a *applyCtx) ownBatch(id, project string) (*vbatchv1.Batch, error) {
	b, ok := a.s.Batches[id]
	if !ok || (project != "" && b.Project != project) {
		return nil, Reject(ErrNotFound, "batch %s", id)
	}
	return b, nil
}

// transition moves a batch to a new status. Every status change goes
// through here, so ValidTransition is the single rule that holds.
func transition(b *vbatchv1.Batch, to vbatchv1.BatchStatus) error {
	if !ValidTransition(b.Status, to) {
		return Reject(ErrConflict, "batch %s is %s, cannot become %s", b.Id, b.Status, to)
	}
	b.Status = to
	return nil
}

func (a *applyCtx) createBatch(c *vbatchv1.CreateBatch) error {
	b := c.GetBatch()
	if b.GetId() == "" || b.Project == "" || b.InputFileId == "" {
		return Reject(ErrInvalid, "batch needs id, project and input_file_id")
	}
	if b.Status != vbatchv1.BatchStatus_BATCH_STATUS_UNSPECIFIED && b.Status != statusValidating {
		return Reject(ErrInvalid, "batch %s: a new batch is validating, not %s", b.Id, b.Status)
	}
	if len(b.Chunks) > 0 || len(b.Errors) > 0 || b.OutputFileId != "" || b.ErrorFileId != "" {
		return Reject(ErrInvalid, "batch %s: a new batch has no chunks, errors or results", b.Id)
	}
	if c.WindowSeconds < 0 {
		return Reject(ErrInvalid, "batch %s: negative window_seconds %d", b.Id, c.WindowSeconds)
	}
	if old, ok := a.s.Batches[b.Id]; ok {
		// A re-applied create is a proposer's retry of a create that had
		// committed, possibly after the batch moved on (even after its
		// input file was deleted).
		if sameCreate(old, b, c.WindowSeconds) {
			return nil
		}
		return Reject(ErrExists, "batch %s exists", b.Id)
	}
	if f, ok := a.s.Files[b.InputFileId]; !ok || f.Project != b.Project {
		return Reject(ErrNotFound, "batch %s: input file %s", b.Id, b.InputFileId)
	}
	b = proto.Clone(b).(*vbatchv1.Batch)
	b.Status = statusValidating
	if b.RequestCounts == nil {
		b.RequestCounts = &vbatchv1.RequestCounts{}
	}
	if b.Usage == nil {
		b.Usage = &vbatchv1.Usage{}
	}
	if b.CreatedAt == 0 {
		b.CreatedAt = a.sec()
	}
	if c.WindowSeconds > 0 {
		// Level 10: the window ends on the FSM's clock, as created_at
		// is, not on the proposer's.
		b.ExpiresAt = b.CreatedAt + c.WindowSeconds
	}
	a.s.Batches[b.Id] = b
	return nil
}

// sameCreate reports whether create (with its command's window_seconds)
// would have made old: the fields a create sets are equal (an unset
// created_at is the applier's time, so any matches, and a window counts
// from the created_at old got). Everything else (status, counts, chunks,
// results) belongs to what happened to the batch since.
func sameCreate(old, create *vbatchv1.Batch, windowSeconds int64) bool {
	createdAt := create.CreatedAt
	if createdAt == 0 {
		createdAt = old.CreatedAt
	}
	expiresAt := create.ExpiresAt
	if windowSeconds > 0 {
		expiresAt = createdAt + windowSeconds
	}
	return old.Project == create.Project && old.InputFileId == create.InputFileId &&
		old.Endpoint == create.Endpoint && old.CompletionWindow == create.CompletionWindow &&
		maps.Equal(old.Metadata, create.Metadata) && old.ExpiresAt == expiresAt &&
		old.CreatedAt == createdAt
}

func (a *applyCtx) failBatch(c *vbatchv1.FailBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status == statusFailed && errorsEqual(b.Errors, c.Errors) {
		return nil // a re-applied fail
	}
	if b.Status != statusValidating {
		return Reject(ErrConflict, "batch %s is %s: only a validating batch can fail", b.Id, b.Status)
	}
	if err := transition(b, statusFailed); err != nil {
		return err
	}
	b.FailedAt = a.sec()
	b.Errors = cloneErrors(c.Errors)
	return nil
}

func (a *applyCtx) startBatch(c *vbatchv1.StartBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status != statusValidating {
		return Reject(ErrConflict, "batch %s is %s: only a validating batch can start", b.Id, b.Status)
	}
	if err := checkChunking(c); err != nil {
		return err
	}
	if err := transition(b, statusInProgress); err != nil {
		return err
	}
	b.InProgressAt = a.sec()
	b.Model = c.Model
	b.RequestCounts.Total = c.Total
	b.Chunks = make([]*vbatchv1.Chunk, len(c.Chunks))
	for i, ch := range c.Chunks {
		b.Chunks[i] = &vbatchv1.Chunk{
			Index:       ch.Index,
			StartLine:   ch.StartLine,
			EndLine:     ch.EndLine,
			StartOffset: ch.StartOffset,
			EndOffset:   ch.EndOffset,
			State:       chunkPending,
			Progress:    ch.StartLine,
		}
	}
	return nil
}

// checkChunking verifies that the chunks are numbered by position and
// cover the lines [0, total) without gap or overlap.
func checkChunking(c *vbatchv1.StartBatch) error {
	if c.Total < 0 {
		return Reject(ErrInvalid, "batch %s: negative total %d", c.BatchId, c.Total)
	}
	next := int64(0)
	for i, ch := range c.Chunks {
		switch {
		case ch.Index != uint32(i):
			return Reject(ErrInvalid, "batch %s: chunk %d has index %d", c.BatchId, i, ch.Index)
		case ch.StartLine != next:
			return Reject(ErrInvalid, "batch %s: chunk %d starts at line %d, want %d", c.BatchId, i, ch.StartLine, next)
		case ch.EndLine <= ch.StartLine:
			return Reject(ErrInvalid, "batch %s: chunk %d is empty or reversed [%d,%d)", c.BatchId, i, ch.StartLine, ch.EndLine)
		case ch.StartOffset < 0 || ch.EndOffset < ch.StartOffset:
			return Reject(ErrInvalid, "batch %s: chunk %d has bad byte range [%d,%d)", c.BatchId, i, ch.StartOffset, ch.EndOffset)
		}
		next = ch.EndLine
	}
	if next != c.Total {
		return Reject(ErrInvalid, "batch %s: chunks cover %d lines, total is %d", c.BatchId, next, c.Total)
	}
	return nil
}

// cancelBatch cancels as OpenAI does: a validating batch is cancelled at
// once (nothing ran); an in-progress one goes to cancelling and keeps its
// leases, and the leader finishes it once no lease is live.
func (a *applyCtx) cancelBatch(c *vbatchv1.CancelBatch) error {
	b, err := a.ownBatch(c.BatchId, c.Project)
	if err != nil {
		return err
	}
	switch b.Status {
	case statusCancelling, statusCancelled:
		return nil // already cancelled
	case statusValidating:
		if err := transition(b, statusCancelled); err != nil {
			return err
		}
		b.CancellingAt, b.CancelledAt = a.sec(), a.sec()
		return nil
	case statusInProgress:
		if err := transition(b, statusCancelling); err != nil {
			return err
		}
		b.CancellingAt = a.sec()
		return nil
	}
	return Reject(ErrConflict, "batch %s is %s and cannot be cancelled", b.Id, b.Status)
}

func (a *applyCtx) beginFinalize(c *vbatchv1.BeginFinalize) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status == statusFinalizing {
		return nil
	}
	if b.Status != statusInProgress {
		return Reject(ErrConflict, "batch %s is %s, not in progress", b.Id, b.Status)
	}
	for _, ch := range b.Chunks {
		if ch.State != chunkDone {
			return Reject(ErrConflict, "batch %s: chunk %d is not done", b.Id, ch.Index)
		}
	}
	if err := transition(b, statusFinalizing); err != nil {
		return err
	}
	b.FinalizingAt = a.sec()
	return nil
}

func errorsEqual(x, y []*vbatchv1.BatchError) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if !proto.Equal(x[i], y[i]) {
			return false
		}
	}
	return true
}

func cloneErrors(errs []*vbatchv1.BatchError) []*vbatchv1.BatchError {
	out := make([]*vbatchv1.BatchError, len(errs))
	for i, e := range errs {
		out[i] = proto.Clone(e).(*vbatchv1.BatchError)
	}
	return out
}
