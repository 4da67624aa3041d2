package fsm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestCreateBatch(t *testing.T) {
	h := validating(t, 10)
	b := h.batch(batch)
	if b.Status != statusValidating || b.CreatedAt != h.Clock.Unix() || b.RequestCounts == nil || b.Usage == nil || b.Metadata["k"] != "v" {
		t.Fatalf("created batch = %v", b)
	}
	h.Advance(time.Second)
	unchanged(t, h, newBatchAt(h, h.Clock.Add(-time.Second))) // same record: created_at is from the first create
}

func TestCreateBatchStampsTimeWhenUnset(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, inputFile("file-in", 1))
	cmd := newBatch(h)
	cmd.Batch.CreatedAt = 0
	h.MustApply(t, cmd)
	if got := h.batch(batch).CreatedAt; got != h.Clock.Unix() {
		t.Fatalf("created_at = %d", got)
	}
	h.Advance(time.Hour)
	unchanged(t, h, cmd)
}

func TestCreateBatchRefusals(t *testing.T) {
	h := validating(t, 10)
	h.MustApply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "file-other", Project: "other"}})
	mk := func(edit func(b *vbatchv1.Batch)) *vbatchv1.CreateBatch {
		c := newBatch(h)
		c.Batch.Id = "batch_2"
		edit(c.Batch)
		return c
	}
	refused(t, h, ErrExists, mk(func(b *vbatchv1.Batch) { b.Id = batch; b.Endpoint = "/v1/embeddings" }))
	refused(t, h, ErrNotFound, mk(func(b *vbatchv1.Batch) { b.InputFileId = "missing" }))
	refused(t, h, ErrNotFound, mk(func(b *vbatchv1.Batch) { b.InputFileId = "file-other" }))
	refused(t, h, ErrInvalid, mk(func(b *vbatchv1.Batch) { b.Id = "" }))
	refused(t, h, ErrInvalid, mk(func(b *vbatchv1.Batch) { b.Project = "" }))
	refused(t, h, ErrInvalid, mk(func(b *vbatchv1.Batch) { b.InputFileId = "" }))
	refused(t, h, ErrInvalid, mk(func(b *vbatchv1.Batch) { b.Status = statusCompleted }))
	refused(t, h, ErrInvalid, mk(func(b *vbatchv1.Batch) { b.Chunks = chunking(10, 5) }))
	refused(t, h, ErrInvalid, mk(func(b *vbatchv1.Batch) { b.OutputFileId = "file-x" }))
}

func TestFailBatch(t *testing.T) {
	h := validating(t, 10)
	errs := []*vbatchv1.BatchError{{Code: "invalid_json_line", Message: "bad", Line: 2}}
	h.Advance(time.Second)
	h.MustApply(t, &vbatchv1.FailBatch{BatchId: batch, Errors: errs})
	b := h.batch(batch)
	if b.Status != statusFailed || b.FailedAt != h.Clock.Unix() || len(b.Errors) != 1 || !proto.Equal(b.Errors[0], errs[0]) {
		t.Fatalf("failed batch = %v", b)
	}
	h.Advance(time.Second)
	unchanged(t, h, &vbatchv1.FailBatch{BatchId: batch, Errors: errs})
	refused(t, h, ErrConflict, &vbatchv1.FailBatch{BatchId: batch, Errors: []*vbatchv1.BatchError{{Code: "other"}}})
	refused(t, h, ErrNotFound, &vbatchv1.FailBatch{BatchId: "nope"})

	h = running(t, 10, 5)
	refused(t, h, ErrConflict, &vbatchv1.FailBatch{BatchId: batch, Errors: errs})
}

func TestStartBatch(t *testing.T) {
	h := validating(t, 25)
	h.Advance(time.Second)
	chunks := chunking(25, 10)
	chunks[1].State, chunks[1].Attempts, chunks[1].Progress = chunkDone, 7, 99 // ignored: a new chunk is pending
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: batch, Model: "llama", Total: 25, Chunks: chunks})
	b := h.batch(batch)
	if b.Status != statusInProgress || b.InProgressAt != h.Clock.Unix() || b.Model != "llama" || b.RequestCounts.Total != 25 || len(b.Chunks) != 3 {
		t.Fatalf("started batch = %v", b)
	}
	for i, c := range b.Chunks {
		if c.Index != uint32(i) || c.State != chunkPending || c.Progress != c.StartLine || c.Attempts != 0 || c.Lease != nil ||
			c.StartOffset != c.StartLine*10 || c.EndOffset != c.EndLine*10 {
			t.Fatalf("chunk %d = %v", i, c)
		}
	}
	refused(t, h, ErrConflict, &vbatchv1.StartBatch{BatchId: batch, Model: "llama", Total: 25, Chunks: chunking(25, 10)})
	refused(t, h, ErrNotFound, &vbatchv1.StartBatch{BatchId: "nope"})
}

func TestStartBatchChecksChunking(t *testing.T) {
	h := validating(t, 10)
	bad := map[string]*vbatchv1.StartBatch{
		"gap":            {Chunks: []*vbatchv1.Chunk{{Index: 0, EndLine: 4}, {Index: 1, StartLine: 5, EndLine: 10}}},
		"overlap":        {Chunks: []*vbatchv1.Chunk{{Index: 0, EndLine: 6}, {Index: 1, StartLine: 5, EndLine: 10}}},
		"short":          {Chunks: []*vbatchv1.Chunk{{Index: 0, EndLine: 4}}},
		"long":           {Chunks: []*vbatchv1.Chunk{{Index: 0, EndLine: 11}}},
		"not at 0":       {Chunks: []*vbatchv1.Chunk{{Index: 0, StartLine: 1, EndLine: 10}}},
		"empty chunk":    {Chunks: []*vbatchv1.Chunk{{Index: 0, EndLine: 10}, {Index: 1, StartLine: 10, EndLine: 10}}},
		"bad index":      {Chunks: []*vbatchv1.Chunk{{Index: 1, EndLine: 10}}},
		"bad offsets":    {Chunks: []*vbatchv1.Chunk{{Index: 0, EndLine: 10, StartOffset: 5, EndOffset: 4}}},
		"no chunks":      {},
		"negative total": {Total: -1},
	}
	for name, cmd := range bad {
		t.Run(name, func(t *testing.T) {
			cmd.BatchId = batch
			if cmd.Total == 0 {
				cmd.Total = 10
			}
			refused(t, h, ErrInvalid, cmd)
		})
	}
}

func TestStartBatchWithNoLines(t *testing.T) {
	h := validating(t, 0)
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: batch, Model: "m"})
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch}) // no chunk left to run
}

func TestCancelValidatingBatch(t *testing.T) {
	h := validating(t, 10)
	h.Advance(time.Second)
	refused(t, h, ErrNotFound, &vbatchv1.CancelBatch{BatchId: batch, Project: "other"})
	refused(t, h, ErrNotFound, &vbatchv1.CancelBatch{BatchId: "nope"})
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch, Project: proj})
	b := h.batch(batch)
	if b.Status != statusCancelled || b.CancellingAt != h.Clock.Unix() || b.CancelledAt != h.Clock.Unix() {
		t.Fatalf("cancelled batch = %v", b)
	}
	h.Advance(time.Second)
	unchanged(t, h, &vbatchv1.CancelBatch{BatchId: batch})
	// Validation finishing after the cancel is refused.
	refused(t, h, ErrConflict, &vbatchv1.StartBatch{BatchId: batch, Model: "m", Total: 10, Chunks: chunking(10, 5)})
	refused(t, h, ErrConflict, &vbatchv1.FailBatch{BatchId: batch})
}

func TestCancelRunningBatch(t *testing.T) {
	h := running(t, 10, 5)
	tok := grant(t, h, 0, "a1")
	h.Advance(time.Second)
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch, Project: proj})
	b := h.batch(batch)
	if b.Status != statusCancelling || b.CancellingAt != h.Clock.Unix() || b.CancelledAt != 0 {
		t.Fatalf("cancelling batch = %v", b)
	}
	if c := b.Chunks[0]; c.State != chunkLeased || c.Lease.Token != tok {
		t.Fatal("cancel ended a lease; the leader finishes once leases end")
	}
	h.Advance(time.Second)
	unchanged(t, h, &vbatchv1.CancelBatch{BatchId: batch})
	refused(t, h, ErrConflict, grantCmd(h, 1, "a2"))
	refused(t, h, ErrConflict, &vbatchv1.BeginFinalize{BatchId: batch})
}

func TestCancelRefusedWhenFinalizingOrOver(t *testing.T) {
	h := running(t, 10, 5)
	runChunk(t, h, 0, 5)
	runChunk(t, h, 1, 5)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	refused(t, h, ErrConflict, &vbatchv1.CancelBatch{BatchId: batch})
	h.MustApply(t, &vbatchv1.FinishBatch{BatchId: batch, Status: statusCompleted, OutputFileId: "o", ErrorFileId: "e"})
	refused(t, h, ErrConflict, &vbatchv1.CancelBatch{BatchId: batch})

	h = validating(t, 10)
	h.MustApply(t, &vbatchv1.FailBatch{BatchId: batch})
	refused(t, h, ErrConflict, &vbatchv1.CancelBatch{BatchId: batch})
}

func TestBeginFinalize(t *testing.T) {
	h := running(t, 10, 5)
	runChunk(t, h, 0, 5)
	refused(t, h, ErrConflict, &vbatchv1.BeginFinalize{BatchId: batch})
	tok := grant(t, h, 1, "a2")
	h.MustApply(t, commit(1, tok, 5, 10, 5))
	refused(t, h, ErrConflict, &vbatchv1.BeginFinalize{BatchId: batch}) // committed but not completed
	h.MustApply(t, complete(1, tok))
	h.Advance(time.Second)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: batch})
	if b := h.batch(batch); b.Status != statusFinalizing || b.FinalizingAt != h.Clock.Unix() {
		t.Fatalf("finalizing batch = %v", b)
	}
	h.Advance(time.Second)
	unchanged(t, h, &vbatchv1.BeginFinalize{BatchId: batch})
	refused(t, h, ErrNotFound, &vbatchv1.BeginFinalize{BatchId: "nope"})

	h = validating(t, 10)
	refused(t, h, ErrConflict, &vbatchv1.BeginFinalize{BatchId: batch})
}

// newBatchAt is newBatch as created at the given time.
func newBatchAt(h *Harness, at time.Time) *vbatchv1.CreateBatch {
	c := newBatch(h)
	c.Batch.CreatedAt = at.Unix()
	c.Batch.ExpiresAt = at.Add(24 * time.Hour).Unix()
	return c
}

// TestCreateBatchRetriedAfterItMovedOn: a proposer retries a create whose
// first attempt committed (its answer was lost in a failover) after the
// leader already started the batch. The retry is the same create and
// succeeds without changing anything; another create under the id is still
// refused.
func TestCreateBatchRetriedAfterItMovedOn(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, inputFile("file-in", 10))
	created := h.Clock
	h.MustApply(t, newBatchAt(h, created))
	h.Advance(time.Second)
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: batch, Model: "m", Total: 10, Chunks: chunking(10, 5)})
	h.Advance(time.Second)
	unchanged(t, h, newBatchAt(h, created))
	other := newBatchAt(h, created)
	other.Batch.Metadata = map[string]string{"k": "other"}
	refused(t, h, ErrExists, other)
}

// TestCreateBatchWindowOnFSMTime: from level 10 a create leaves
// created_at unset and gives the window as window_seconds; the batch is
// created at the command's (the leader's) time and its window ends that
// long after, whatever expires_at the proposer's clock put in. A retry at
// a later time is the same create; another window is not.
func TestCreateBatchWindowOnFSMTime(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, inputFile("file-in", 1))
	cmd := newBatch(h)
	cmd.Batch.CreatedAt = 0
	cmd.Batch.ExpiresAt = h.Clock.Add(-10 * time.Minute).Unix() // a proposer ten minutes behind, ignored
	cmd.WindowSeconds = 3600
	h.MustApply(t, cmd)
	b := h.batch(batch)
	if b.CreatedAt != h.Clock.Unix() || b.ExpiresAt != h.Clock.Unix()+3600 {
		t.Fatalf("created_at %d, expires_at %d; want %d and %d", b.CreatedAt, b.ExpiresAt, h.Clock.Unix(), h.Clock.Unix()+3600)
	}
	h.Advance(time.Minute)
	unchanged(t, h, cmd)
	retry := proto.Clone(cmd).(*vbatchv1.CreateBatch)
	retry.Batch.CreatedAt = b.CreatedAt
	unchanged(t, h, retry)
	other := proto.Clone(cmd).(*vbatchv1.CreateBatch)
	other.WindowSeconds = 7200
	refused(t, h, ErrExists, other)
	negative := proto.Clone(cmd).(*vbatchv1.CreateBatch)
	negative.Batch.Id, negative.WindowSeconds = "batch_2", -1
	refused(t, h, ErrInvalid, negative)
}
