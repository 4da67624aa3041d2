package fsm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestCompactBatch(t *testing.T) {
	h := finalizing(t)
	refused(t, h, ErrConflict, &vbatchv1.CompactBatch{BatchId: batch}) // not ended yet
	refused(t, h, ErrNotFound, &vbatchv1.CompactBatch{BatchId: "batch_none"})
	h.Advance(time.Second)
	h.MustApply(t, finish(statusCompleted))
	before := proto.Clone(h.State().Batches[batch]).(*vbatchv1.Batch)
	h.MustApply(t, &vbatchv1.CompactBatch{BatchId: batch})
	after := h.State().Batches[batch]
	if !after.Compacted || len(after.Chunks) != 0 {
		t.Fatalf("compacted batch keeps %d chunks (compacted %v)", len(after.Chunks), after.Compacted)
	}
	before.Chunks, before.Compacted = nil, true
	if !proto.Equal(before, after) {
		t.Fatalf("compaction changed more than the chunks:\n%v\n%v", before, after)
	}
	// Its result files still hold every part; a re-applied compaction is a
	// no-op; a late agent call on a chunk finds none.
	if f := h.State().Files["file-out"]; len(f.GetParts()) != 3 {
		t.Fatalf("output file after compaction = %v", f)
	}
	h.MustApply(t, &vbatchv1.CompactBatch{BatchId: batch})
	refused(t, h, ErrNotFound, commit(0, 1, 10, 10, 0))
}
