package fsm

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Statuses, short.
const (
	stValidating = vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING
	stInProgress = vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS
	stFinalizing = vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING
	stCancelling = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING
	stCompleted  = vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED
	stFailed     = vbatchv1.BatchStatus_BATCH_STATUS_FAILED
	stExpired    = vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED
	stCancelled  = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED

	chPending = vbatchv1.ChunkState_CHUNK_STATE_PENDING
	chLeased  = vbatchv1.ChunkState_CHUNK_STATE_LEASED
	chDone    = vbatchv1.ChunkState_CHUNK_STATE_DONE
)

// batch returns the batch for an update: a copy, stored back by commit only
// when the command succeeds, so a refusal leaves no trace.
func (a *applyCtx) batch(id string) (*vbatchv1.Batch, error) {
	b, ok := a.s.Batches[id]
	if !ok {
		return nil, Reject(ErrNotFound, "batch %s", id)
	}
	return proto.Clone(b).(*vbatchv1.Batch), nil
}

func (a *applyCtx) commit(b *vbatchv1.Batch) { a.s.Batches[b.Id] = b }

// move changes a batch's status and stamps the matching *_at field.
func (a *applyCtx) move(b *vbatchv1.Batch, to vbatchv1.BatchStatus) error {
	if !ValidTransition(b.Status, to) {
		return Reject(ErrConflict, "batch %s is %s; cannot become %s", b.Id, StatusName(b.Status), StatusName(to))
	}
	b.Status = to
	now := a.sec()
	switch to {
	case stInProgress:
		b.InProgressAt = now
	case stFinalizing:
		b.FinalizingAt = now
	case stCancelling:
		b.CancellingAt = now
	case stCompleted:
		b.CompletedAt = now
	case stFailed:
		b.FailedAt = now
	case stExpired:
		b.ExpiredAt = now
	case stCancelled:
		if b.CancellingAt == 0 {
			b.CancellingAt = now
		}
		b.CancelledAt = now
	}
	return nil
}

func (a *applyCtx) createBatch(c *vbatchv1.CreateBatch) error {
	nb := c.GetBatch()
	if nb.GetId() == "" || nb.Project == "" || nb.InputFileId == "" || nb.Endpoint == "" {
		return Reject(ErrInvalid, "batch needs id, project, input file and endpoint")
	}
	if old, ok := a.s.Batches[nb.Id]; ok {
		if old.InputFileId == nb.InputFileId && old.Project == nb.Project && old.Endpoint == nb.Endpoint {
			return nil // a retried create that already committed
		}
		return Reject(ErrExists, "batch %s exists", nb.Id)
	}
	f, ok := a.s.Files[nb.InputFileId]
	if !ok || f.Project != nb.Project {
		return Reject(ErrNotFound, "input file %s", nb.InputFileId)
	}
	b := proto.Clone(nb).(*vbatchv1.Batch)
	b.Status = stValidating
	if b.CreatedAt == 0 {
		b.CreatedAt = a.sec()
	}
	b.RequestCounts = &vbatchv1.RequestCounts{}
	b.Usage = &vbatchv1.Usage{}
	b.Chunks, b.Errors = nil, nil
	b.OutputFileId, b.ErrorFileId = "", ""
	a.commit(b)
	return nil
}

func (a *applyCtx) failBatch(c *vbatchv1.FailBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status == stFailed {
		return nil
	}
	if b.Status != stValidating {
		return Reject(ErrConflict, "batch %s is %s, not validating", b.Id, StatusName(b.Status))
	}
	if err := a.move(b, stFailed); err != nil {
		return err
	}
	b.Errors = cloneErrors(c.Errors)
	a.commit(b)
	return nil
}

func (a *applyCtx) startBatch(c *vbatchv1.StartBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status != stValidating {
		return Reject(ErrConflict, "batch %s is %s, not validating", b.Id, StatusName(b.Status))
	}
	if c.Total <= 0 || c.Model == "" || len(c.Chunks) == 0 {
		return Reject(ErrInvalid, "start batch %s: needs model, total and chunks", b.Id)
	}
	var next int64
	chunks := make([]*vbatchv1.Chunk, len(c.Chunks))
	for i, ch := range c.Chunks {
		if ch.StartLine != next || ch.EndLine <= ch.StartLine || ch.EndOffset < ch.StartOffset {
			return Reject(ErrInvalid, "start batch %s: chunk %d covers [%d,%d), expected start %d", b.Id, i, ch.StartLine, ch.EndLine, next)
		}
		next = ch.EndLine
		chunks[i] = &vbatchv1.Chunk{
			Index: uint32(i), StartLine: ch.StartLine, EndLine: ch.EndLine,
			StartOffset: ch.StartOffset, EndOffset: ch.EndOffset,
			State: chPending, Progress: ch.StartLine,
		}
	}
	if next != c.Total {
		return Reject(ErrInvalid, "start batch %s: chunks cover %d lines, total is %d", b.Id, next, c.Total)
	}
	if err := a.move(b, stInProgress); err != nil {
		return err
	}
	b.Model, b.Chunks = c.Model, chunks
	b.RequestCounts.Total = c.Total
	a.commit(b)
	return nil
}

func (a *applyCtx) cancelBatch(c *vbatchv1.CancelBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if c.Project != "" && b.Project != c.Project {
		return Reject(ErrNotFound, "batch %s", c.BatchId)
	}
	switch b.Status {
	case stCancelling, stCancelled:
		return nil
	case stValidating:
		err = a.move(b, stCancelled)
	case stInProgress:
		err = a.move(b, stCancelling)
	default:
		err = Reject(ErrConflict, "batch %s is %s and cannot be cancelled", b.Id, StatusName(b.Status))
	}
	if err != nil {
		return err
	}
	a.commit(b)
	return nil
}

func (a *applyCtx) beginFinalize(c *vbatchv1.BeginFinalize) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status == stFinalizing {
		return nil
	}
	if b.Status != stInProgress {
		return Reject(ErrConflict, "batch %s is %s, not in progress", b.Id, StatusName(b.Status))
	}
	for _, ch := range b.Chunks {
		if ch.State != chDone {
			return Reject(ErrConflict, "batch %s: chunk %d is not done", b.Id, ch.Index)
		}
	}
	if err := a.move(b, stFinalizing); err != nil {
		return err
	}
	a.commit(b)
	return nil
}

// finishBatch ends a batch as completed, cancelled or expired and builds its
// output and error files from the committed parts, without copying bytes.
func (a *applyCtx) finishBatch(c *vbatchv1.FinishBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if b.Status == c.Status && IsTerminal(b.Status) {
		return nil
	}
	switch c.Status {
	case stCompleted:
	case stCancelled:
		for _, ch := range b.Chunks {
			if LiveLease(ch, a.ms()) {
				return Reject(ErrConflict, "batch %s: chunk %d still has a live lease", b.Id, ch.Index)
			}
		}
	case stExpired:
		if a.sec() < b.ExpiresAt {
			return Reject(ErrConflict, "batch %s expires at %d, not yet", b.Id, b.ExpiresAt)
		}
	default:
		return Reject(ErrInvalid, "finish batch %s: status %s is not an end", b.Id, StatusName(c.Status))
	}
	if len(c.ExpectedProgress) > 0 {
		if len(c.ExpectedProgress) != len(b.Chunks) {
			return Reject(ErrConflict, "batch %s: expected progress of %d chunks, has %d", b.Id, len(c.ExpectedProgress), len(b.Chunks))
		}
		for i, ch := range b.Chunks {
			if ch.Progress != c.ExpectedProgress[i] {
				return Reject(ErrConflict, "batch %s: chunk %d moved to line %d since", b.Id, i, ch.Progress)
			}
		}
	}
	if err := a.move(b, c.Status); err != nil {
		return err
	}
	if c.ExtraFailed > 0 && c.ExtraErrors == nil {
		return Reject(ErrInvalid, "finish batch %s: %d extra errors without their blob", b.Id, c.ExtraFailed)
	}
	out := &vbatchv1.File{Id: c.OutputFileId, Project: b.Project, Purpose: "batch_output",
		Filename: b.Id + "_output.jsonl", CreatedAt: a.sec(), BatchId: b.Id, Lines: b.RequestCounts.Completed}
	errf := &vbatchv1.File{Id: c.ErrorFileId, Project: b.Project, Purpose: "batch_output",
		Filename: b.Id + "_error.jsonl", CreatedAt: a.sec(), BatchId: b.Id, Lines: b.RequestCounts.Failed + c.ExtraFailed}
	for _, ch := range b.Chunks {
		for _, p := range ch.Parts {
			appendPart(out, p.Output)
			appendPart(errf, p.Errors)
		}
		ch.Parts = nil
		if ch.State == chLeased {
			endLease(ch)
		}
	}
	appendPart(errf, c.ExtraErrors)
	b.RequestCounts.Failed += c.ExtraFailed
	for _, f := range []*vbatchv1.File{out, errf} {
		if f.Lines == 0 || len(f.Parts) == 0 {
			continue
		}
		if f.Id == "" {
			return Reject(ErrInvalid, "finish batch %s: file ids required", b.Id)
		}
		if _, ok := a.s.Files[f.Id]; ok {
			return Reject(ErrExists, "file %s exists", f.Id)
		}
	}
	if out.Lines > 0 && len(out.Parts) > 0 {
		a.s.Files[out.Id] = out
		b.OutputFileId = out.Id
	}
	if errf.Lines > 0 && len(errf.Parts) > 0 {
		a.s.Files[errf.Id] = errf
		b.ErrorFileId = errf.Id
	}
	a.commit(b)
	return nil
}

func appendPart(f *vbatchv1.File, r *vbatchv1.BlobRef) {
	if r == nil || r.Bytes == 0 {
		return
	}
	f.Parts = append(f.Parts, proto.Clone(r).(*vbatchv1.BlobRef))
	f.Bytes += r.Bytes
}

func cloneErrors(errs []*vbatchv1.BatchError) []*vbatchv1.BatchError {
	out := make([]*vbatchv1.BatchError, len(errs))
	for i, e := range errs {
		out[i] = proto.Clone(e).(*vbatchv1.BatchError)
	}
	return out
}

// StatusName is the OpenAI name of a batch status ("in_progress").
func StatusName(s vbatchv1.BatchStatus) string {
	switch s {
	case stValidating:
		return "validating"
	case stInProgress:
		return "in_progress"
	case stFinalizing:
		return "finalizing"
	case stCancelling:
		return "cancelling"
	case stCompleted:
		return "completed"
	case stFailed:
		return "failed"
	case stExpired:
		return "expired"
	case stCancelled:
		return "cancelled"
	}
	return fmt.Sprintf("status(%d)", s)
}
