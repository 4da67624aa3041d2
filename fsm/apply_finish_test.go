package fsm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func finish(status vbatchv1.BatchStatus) *vbatchv1.FinishBatch {
	return &vbatchv1.FinishBatch{BatchId: batch, Status: status, OutputFileId: "file-out", ErrorFileId: "file-err"}
}

// finalizing runs batch_1 (25 lines in chunks of 10) to finalizing: the
// chunks commit 8/10, 10/10 and 0/5 succeeded lines.
func finalizing(t *testing.T) *Harness {
	t.Helper()
	h := running(t, 25, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 4, 4))
	h.MustApply(t, commit(0, tok, 4, 10, 4))
	h.MustApply(t, complete(0, tok))
	runChunk(t, h, 1, 10)
	runChunk(t, h, 2, 0)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	return h
}

func TestFinishCompleted(t *testing.T) {
	h := finalizing(t)
	h.Advance(time.Second)
	h.MustApply(t, finish(statusCompleted))
	s := h.State()
	b := s.Batches[batch]
	if b.Status != statusCompleted || b.CompletedAt != h.Clock.Unix() || b.OutputFileId != "file-out" || b.ErrorFileId != "file-err" {
		t.Fatalf("completed batch = %v", b)
	}
	if rc := b.RequestCounts; rc.Completed != 18 || rc.Failed != 7 || rc.Total != 25 {
		t.Fatalf("counts = %v", rc)
	}
	wantOut := &vbatchv1.File{
		Id: "file-out", Project: proj, Purpose: "batch_output", Filename: batch + "_output.jsonl",
		Bytes: 180, CreatedAt: h.Clock.Unix(), Lines: 18, BatchId: batch,
		// Chunk 2's output part holds no bytes and is left out.
		Parts: []*vbatchv1.BlobRef{blob("out", 40), blob("out", 40), blob("out", 100)},
	}
	if got := s.Files["file-out"]; !proto.Equal(got, wantOut) {
		t.Fatalf("output file = %v\nwant %v", got, wantOut)
	}
	wantErr := &vbatchv1.File{
		Id: "file-err", Project: proj, Purpose: "batch_output", Filename: batch + "_error.jsonl",
		Bytes: 70, CreatedAt: h.Clock.Unix(), Lines: 7, BatchId: batch,
		Parts: []*vbatchv1.BlobRef{blob("err", 20), blob("err", 50)},
	}
	if got := s.Files["file-err"]; !proto.Equal(got, wantErr) {
		t.Fatalf("error file = %v\nwant %v", got, wantErr)
	}
	// A re-applied finish (with the fresh ids a retry would carry) is a
	// no-op; any other ending is refused.
	unchanged(t, h, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "file-x", ErrorFileId: "file-y"})
	refused(t, h, ErrConflict, finish(statusExpired))
	refused(t, h, ErrConflict, finish(statusCancelled))
}

func TestFinishCreatesOnlyFilesWithLines(t *testing.T) {
	h := running(t, 10, 10)
	runChunk(t, h, 0, 10)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	h.MustApply(t, finish(statusCompleted))
	s := h.State()
	if b := s.Batches[batch]; b.OutputFileId != "file-out" || b.ErrorFileId != "" {
		t.Fatalf("batch files %q %q", b.OutputFileId, b.ErrorFileId)
	}
	if _, ok := s.Files["file-err"]; ok {
		t.Fatal("an error file without errors was created")
	}
	if f := s.Files["file-out"]; f.Sha256 != "out" {
		t.Fatalf("a single-part file carries its blob's hash, got %q", f.Sha256)
	}

	h = running(t, 10, 10)
	runChunk(t, h, 0, 0)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	h.MustApply(t, finish(statusCompleted))
	if b := h.batch(batch); b.OutputFileId != "" || b.ErrorFileId != "file-err" {
		t.Fatalf("batch files %q %q", b.OutputFileId, b.ErrorFileId)
	}
}

func TestFinishCompletedRefusals(t *testing.T) {
	h := running(t, 10, 10)
	refused(t, h, ErrConflict, finish(statusCompleted)) // not finalizing
	runChunk(t, h, 0, 5)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	refused(t, h, ErrNotFound, &vbatchv1.FinishBatch{BatchId: "nope", Status: statusCompleted})
	refused(t, h, ErrInvalid, &vbatchv1.FinishBatch{BatchId: batch, Status: statusFailed})
	refused(t, h, ErrInvalid, &vbatchv1.FinishBatch{BatchId: batch, Status: statusInProgress})
	refused(t, h, ErrInvalid, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, ErrorFileId: "e"}) // no output id
	refused(t, h, ErrInvalid, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "same", ErrorFileId: "same"})
	refused(t, h, ErrExists, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "file-in", ErrorFileId: "e"})
	refused(t, h, ErrConflict, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "o", ErrorFileId: "e", ExpectedProgress: []int64{3}})
	refused(t, h, ErrConflict, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "o", ErrorFileId: "e", ExpectedProgress: []int64{10, 0}})
	h.MustApply(t, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "o", ErrorFileId: "e", ExpectedProgress: []int64{10}})
}

func TestFinishCancelled(t *testing.T) {
	h := running(t, 20, 10)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 4, 3))
	refused(t, h, ErrConflict, finish(statusCancelled)) // not cancelling
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch})
	refused(t, h, ErrConflict, finish(statusCancelled)) // a lease is live
	h.Advance(leaseTTL)                                 // the lease runs out; nobody expired it
	h.MustApply(t, finish(statusCancelled))
	s := h.State()
	b := s.Batches[batch]
	if b.Status != statusCancelled || b.CancelledAt != h.Clock.Unix() || b.OutputFileId != "file-out" || b.ErrorFileId != "file-err" {
		t.Fatalf("cancelled batch = %v", b)
	}
	if rc := b.RequestCounts; rc.Completed != 3 || rc.Failed != 1 {
		t.Fatalf("counts = %v", rc)
	}
	for _, c := range b.Chunks {
		if c.State != chunkPending || c.Lease != nil {
			t.Fatalf("chunk of a cancelled batch = %v", c)
		}
	}
	if s.Files["file-out"].Lines != 3 || s.Files["file-err"].Lines != 1 {
		t.Fatal("result files of a cancelled batch hold the committed lines")
	}
	unchanged(t, h, finish(statusCancelled))
	refused(t, h, ErrConflict, finish(statusExpired))
}

func TestFinishExpired(t *testing.T) {
	h := running(t, 20, 10)
	runChunk(t, h, 0, 10)
	tok := grant(t, h, 1, "a1")
	h.MustApply(t, commit(1, tok, 10, 15, 5))
	exp := &vbatchv1.FinishBatch{BatchId: batch, Status: statusExpired, OutputFileId: "file-out", ErrorFileId: "file-err",
		ExtraErrors: blob("expired", 50), ExtraFailed: 5, ExpectedProgress: []int64{10, 15}}
	refused(t, h, ErrConflict, exp) // not yet
	h.Advance(24 * time.Hour)
	moved := proto.Clone(exp).(*vbatchv1.FinishBatch)
	moved.ExpectedProgress = []int64{10, 12}
	refused(t, h, ErrConflict, moved) // a part landed after the leader read the state
	tooMany := proto.Clone(exp).(*vbatchv1.FinishBatch)
	tooMany.ExtraFailed = 6
	refused(t, h, ErrInvalid, tooMany) // more lines than were left
	noBlob := proto.Clone(exp).(*vbatchv1.FinishBatch)
	noBlob.ExtraErrors = nil
	refused(t, h, ErrInvalid, noBlob)
	noLines := proto.Clone(exp).(*vbatchv1.FinishBatch)
	noLines.ExtraFailed = 0
	refused(t, h, ErrInvalid, noLines)
	negative := proto.Clone(exp).(*vbatchv1.FinishBatch)
	negative.ExtraFailed = -1
	refused(t, h, ErrInvalid, negative)

	h.MustApply(t, exp)
	s := h.State()
	b := s.Batches[batch]
	if b.Status != statusExpired || b.ExpiredAt != h.Clock.Unix() || b.RequestCounts.Completed != 15 || b.RequestCounts.Failed != 5 {
		t.Fatalf("expired batch = %v", b)
	}
	if c := b.Chunks[1]; c.Lease != nil || c.State != chunkPending || c.Progress != 15 {
		t.Fatalf("chunk of an expired batch = %v", c)
	}
	errf := s.Files["file-err"]
	if errf.Lines != 5 || len(errf.Parts) != 1 || errf.Parts[0].Sha256 != "expired" {
		t.Fatalf("error file = %v", errf)
	}
	refused(t, h, ErrConflict, commit(1, tok, 15, 20, 5)) // the batch is over
	refused(t, h, ErrConflict, &vbatchv1.RenewLease{BatchId: batch, Chunk: 1, Token: tok, ExpiresAt: h.expiry()})
	unchanged(t, h, exp)
}

func TestFinishExpiredFromEveryLiveStatus(t *testing.T) {
	for name, setup := range map[string]func(t *testing.T) *Harness{
		"validating":  func(t *testing.T) *Harness { return validating(t, 10) },
		"in progress": func(t *testing.T) *Harness { return running(t, 10, 10) },
		"finalizing":  finalizing,
		"cancelling": func(t *testing.T) *Harness {
			h := running(t, 10, 10)
			grant(t, h, 0, "a1") // a live lease does not hold off expiry
			h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch})
			return h
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := setup(t)
			h.Advance(24 * time.Hour)
			from := h.batch(batch).Status
			cmd := finish(statusExpired)
			if left := h.batch(batch).RequestCounts; left.Total > left.Completed+left.Failed {
				cmd.ExtraErrors, cmd.ExtraFailed = blob("expired", 1), left.Total-left.Completed-left.Failed
			}
			h.MustApply(t, cmd)
			b := h.batch(batch)
			if b.Status != statusExpired || !ValidTransition(from, statusExpired) {
				t.Fatalf("%s batch expired to %s", from, b.Status)
			}
			for _, c := range b.Chunks {
				if c.State == chunkLeased || (c.State != chunkDone && c.Lease != nil) {
					t.Fatalf("chunk kept a lease: %v", c)
				}
			}
		})
	}
}

func TestFinishExpiredNeedsAnExpiry(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, inputFile("file-in", 1))
	cmd := newBatch(h)
	cmd.Batch.ExpiresAt = 0
	h.MustApply(t, cmd)
	h.Advance(1000 * time.Hour)
	refused(t, h, ErrConflict, finish(statusExpired))
}

// A batch's output_expires_after_seconds dates its result files from
// their creation.
func TestFinishDatesResultFilesByOutputExpiry(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, inputFile("file-in", 25))
	nb := newBatch(h)
	nb.Batch.OutputExpiresAfterSeconds = 3600
	h.MustApply(t, nb)
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: batch, Model: "m", Total: 25, Chunks: chunking(25, 10)})
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1", Models: []string{"m"}}})
	for c := uint32(0); c < 3; c++ {
		runChunk(t, h, c, 3)
	}
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	h.Advance(time.Minute)
	h.MustApply(t, finish(statusCompleted))
	s := h.State()
	for _, id := range []string{"file-out", "file-err"} {
		f := s.Files[id]
		if f == nil || f.ExpiresAt != f.CreatedAt+3600 {
			t.Errorf("%s = %v, want expiring 3600 s after its creation", id, f)
		}
	}
	if f := s.Files["file-in"]; f.ExpiresAt != 0 {
		t.Errorf("the input file got an expiry: %v", f)
	}
}

// TestExpiryFromValidatingRefusedOnceStarted: the leader computed an
// expiry from the batch while it was still validating (no chunks, no
// lines to expire), and StartBatch committed before it. From level 7 the
// command says its (empty) expected progress is given, and is refused
// rather than expire a batch whose requests land in no file.
func TestExpiryFromValidatingRefusedOnceStarted(t *testing.T) {
	h := validating(t, 10)
	h.Advance(25 * time.Hour)
	fromValidating := finish(statusExpired)
	fromValidating.ProgressGiven = true
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: batch, Model: "m", Total: 10, Chunks: chunking(10, 5)})
	refused(t, h, ErrConflict, fromValidating)

	exp := finish(statusExpired)
	exp.ProgressGiven, exp.ExpectedProgress = true, []int64{0, 5}
	exp.ExtraErrors, exp.ExtraFailed = blob("expired", 100), 10
	h.MustApply(t, exp)
	if b := h.batch(batch); b.Status != statusExpired || b.RequestCounts.Failed != 10 {
		t.Fatalf("expired batch = %v", b)
	}

	// A batch that is still validating expires with nothing to write.
	h = validating(t, 10)
	h.Advance(25 * time.Hour)
	h.MustApply(t, fromValidating)
	if b := h.batch(batch); b.Status != statusExpired {
		t.Fatalf("validating batch = %v, want expired", b)
	}
}
