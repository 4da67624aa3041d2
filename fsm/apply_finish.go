package fsm

import (
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Output files of a batch carry OpenAI's purpose for them.
const outputPurpose = "batch_output"

// finishBatch ends a batch as completed, cancelled or expired, and creates
// its output and error files from the committed parts. Like OpenAI, a
// batch has an output file only if some request succeeded and an error
// file only if some failed.
func (a *applyCtx) finishBatch(c *vbatchv1.FinishBatch) error {
	b, err := a.batch(c.BatchId)
	if err != nil {
		return err
	}
	if IsTerminal(b.Status) {
		if b.Status == c.Status {
			return nil // a re-applied finish
		}
		return Reject(ErrConflict, "batch %s is already %s", b.Id, b.Status)
	}
	if err := a.checkFinish(b, c); err != nil {
		return err
	}
	out, errf, err := a.resultFiles(b, c)
	if err != nil {
		return err
	}
	if err := transition(b, c.Status); err != nil {
		return err
	}
	// Every check has passed: from here on nothing refuses.
	if out != nil {
		a.s.Files[out.Id] = out
		b.OutputFileId = out.Id
	}
	if errf != nil {
		a.s.Files[errf.Id] = errf
		b.ErrorFileId = errf.Id
	}
	b.RequestCounts.Failed += c.ExtraFailed
	switch c.Status {
	case statusCompleted:
		b.CompletedAt = a.sec()
	case statusCancelled:
		b.CancelledAt = a.sec()
	case statusExpired:
		b.ExpiredAt = a.sec()
	}
	for _, ch := range b.Chunks {
		if ch.State != chunkDone {
			endLease(ch)
		}
	}
	return nil
}

// checkFinish says whether the batch may end with c.Status now.
func (a *applyCtx) checkFinish(b *vbatchv1.Batch, c *vbatchv1.FinishBatch) error {
	switch c.Status {
	case statusCompleted:
		if b.Status != statusFinalizing {
			return Reject(ErrConflict, "batch %s is %s: only a finalizing batch completes", b.Id, b.Status)
		}
	case statusCancelled:
		if b.Status != statusCancelling {
			return Reject(ErrConflict, "batch %s is %s: only a cancelling batch is cancelled", b.Id, b.Status)
		}
		for _, ch := range b.Chunks {
			if LiveLease(ch, a.nowMs) {
				return Reject(ErrConflict, "batch %s: chunk %d still holds a live lease", b.Id, ch.Index)
			}
		}
	case statusExpired:
		if b.ExpiresAt == 0 || a.sec() < b.ExpiresAt {
			return Reject(ErrConflict, "batch %s expires at %d, now is %d", b.Id, b.ExpiresAt, a.sec())
		}
	default:
		return Reject(ErrInvalid, "batch %s: a batch cannot finish as %s", b.Id, c.Status)
	}
	if len(c.ExpectedProgress) > 0 || c.ProgressGiven {
		if len(c.ExpectedProgress) != len(b.Chunks) {
			return Reject(ErrConflict, "batch %s: expected progress of %d chunks, batch has %d", b.Id, len(c.ExpectedProgress), len(b.Chunks))
		}
		for i, ch := range b.Chunks {
			if ch.Progress != c.ExpectedProgress[i] {
				return Reject(ErrConflict, "batch %s: chunk %d moved to line %d since line %d", b.Id, i, ch.Progress, c.ExpectedProgress[i])
			}
		}
	}
	switch {
	case c.ExtraFailed < 0:
		return Reject(ErrInvalid, "batch %s: negative extra_failed", b.Id)
	case c.ExtraFailed > 0 && c.ExtraErrors.GetBytes() <= 0:
		return Reject(ErrInvalid, "batch %s: %d extra failed lines without an error blob", b.Id, c.ExtraFailed)
	case c.ExtraFailed == 0 && c.ExtraErrors.GetBytes() > 0:
		return Reject(ErrInvalid, "batch %s: an extra error blob without extra failed lines", b.Id)
	}
	rc := b.RequestCounts
	if rc.Completed+rc.Failed+c.ExtraFailed > rc.Total {
		return Reject(ErrInvalid, "batch %s: %d extra failed lines exceed the %d not run", b.Id, c.ExtraFailed, rc.Total-rc.Completed-rc.Failed)
	}
	return nil
}

// resultFiles builds the output and error files of a finishing batch,
// without storing them; nil for a file that would have no line.
func (a *applyCtx) resultFiles(b *vbatchv1.Batch, c *vbatchv1.FinishBatch) (out, errf *vbatchv1.File, err error) {
	var outParts, errParts []*vbatchv1.BlobRef
	for _, ch := range b.Chunks {
		for _, p := range ch.Parts {
			outParts = appendBlob(outParts, p.Output)
			errParts = appendBlob(errParts, p.Errors)
		}
	}
	errParts = appendBlob(errParts, c.ExtraErrors)
	if n := b.RequestCounts.Completed; n > 0 {
		if out, err = a.resultFile(b, c.OutputFileId, "_output.jsonl", n, outParts); err != nil {
			return nil, nil, err
		}
	}
	if n := b.RequestCounts.Failed + c.ExtraFailed; n > 0 {
		if errf, err = a.resultFile(b, c.ErrorFileId, "_error.jsonl", n, errParts); err != nil {
			return nil, nil, err
		}
		if out != nil && out.Id == errf.Id {
			return nil, nil, Reject(ErrInvalid, "batch %s: output and error file share id %s", b.Id, out.Id)
		}
	}
	return out, errf, nil
}

func (a *applyCtx) resultFile(b *vbatchv1.Batch, id, suffix string, lines int64, parts []*vbatchv1.BlobRef) (*vbatchv1.File, error) {
	if id == "" {
		return nil, Reject(ErrInvalid, "batch %s: no id for its %s file", b.Id, suffix)
	}
	if _, ok := a.s.Files[id]; ok {
		return nil, Reject(ErrExists, "batch %s: file %s exists", b.Id, id)
	}
	f := &vbatchv1.File{
		Id:        id,
		Project:   b.Project,
		Purpose:   outputPurpose,
		Filename:  b.Id + suffix,
		CreatedAt: a.sec(),
		Lines:     lines,
		Parts:     parts,
		BatchId:   b.Id,
	}
	if secs := b.OutputExpiresAfterSeconds; secs > 0 {
		f.ExpiresAt = f.CreatedAt + secs
	}
	for _, p := range parts {
		f.Bytes += p.Bytes
	}
	if len(parts) == 1 {
		f.Sha256 = parts[0].Sha256
	}
	return f, nil
}

// appendBlob appends a copy of r unless it holds no bytes.
func appendBlob(parts []*vbatchv1.BlobRef, r *vbatchv1.BlobRef) []*vbatchv1.BlobRef {
	if r.GetBytes() <= 0 {
		return parts
	}
	return append(parts, proto.Clone(r).(*vbatchv1.BlobRef))
}
