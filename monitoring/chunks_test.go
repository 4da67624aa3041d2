package monitoring

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func histogramOf(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

func TestChunkTrackerLifecycle(t *testing.T) {
	m := NewChunkMetrics(prometheus.NewPedanticRegistry())
	tr := NewChunkTracker(m)
	start := time.Unix(1000, 0)
	b := &vbatchv1.Batch{Id: "batch_x", Status: vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS, InProgressAt: 1000,
		Chunks: []*vbatchv1.Chunk{
			{Index: 0, StartLine: 0, EndLine: 100, State: vbatchv1.ChunkState_CHUNK_STATE_PENDING},
			{Index: 1, StartLine: 100, EndLine: 150, State: vbatchv1.ChunkState_CHUNK_STATE_PENDING},
		}}
	tr.Observe(start, b)

	// Chunk 0 leased 3 s after the batch started; chunk 1 leased too.
	b.Chunks[0].State, b.Chunks[0].Attempts = vbatchv1.ChunkState_CHUNK_STATE_LEASED, 1
	b.Chunks[0].Lease = &vbatchv1.Lease{AgentId: "a", Token: 7, GrantedAt: 1003_000}
	b.Chunks[1].State, b.Chunks[1].Attempts = vbatchv1.ChunkState_CHUNK_STATE_LEASED, 1
	b.Chunks[1].Lease = &vbatchv1.Lease{AgentId: "b", Token: 8, GrantedAt: 1001_000}
	tr.Observe(start.Add(3*time.Second), b)
	if n, sum := histogramOf(t, m.QueueWait); n != 2 || sum != 4 {
		t.Fatalf("queue wait count=%d sum=%v, want 2 and 4", n, sum)
	}

	// Chunk 0 finishes 10 s after its grant; chunk 1's lease expires.
	b.Chunks[0].State, b.Chunks[0].Lease, b.Chunks[0].Progress = vbatchv1.ChunkState_CHUNK_STATE_DONE, nil, 100
	b.Chunks[1].State, b.Chunks[1].Lease = vbatchv1.ChunkState_CHUNK_STATE_PENDING, nil
	tr.Observe(time.UnixMilli(1013_000), b)
	if n, sum := histogramOf(t, m.Duration); n != 1 || sum != 10 {
		t.Fatalf("chunk duration count=%d sum=%v, want 1 and 10", n, sum)
	}
	if n, sum := histogramOf(t, m.Size); n != 1 || sum != 100 {
		t.Fatalf("chunk size count=%d sum=%v, want 1 and 100", n, sum)
	}
	if v := testutil.ToFloat64(m.Processed.WithLabelValues(ChunkRequeued)); v != 1 {
		t.Fatalf("requeued = %v, want 1", v)
	}

	// Chunk 1 is leased again 2 s after it went back to pending.
	b.Chunks[1].State, b.Chunks[1].Attempts = vbatchv1.ChunkState_CHUNK_STATE_LEASED, 2
	b.Chunks[1].Lease = &vbatchv1.Lease{AgentId: "a", Token: 20, GrantedAt: 1015_000}
	tr.Observe(time.UnixMilli(1015_500), b)
	if n, sum := histogramOf(t, m.QueueWait); n != 3 || sum != 6 {
		t.Fatalf("queue wait count=%d sum=%v, want 3 and 6", n, sum)
	}
	// A re-observation of the same state records nothing more.
	tr.Observe(time.UnixMilli(1016_000), b)
	if n, _ := histogramOf(t, m.QueueWait); n != 3 {
		t.Fatalf("queue wait count=%d after a repeat look, want 3", n)
	}

	// Cancelled: the batch leaves the tracker.
	b.Status = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED
	tr.Observe(time.UnixMilli(1017_000), b)
	if len(tr.batches) != 0 {
		t.Fatalf("tracker keeps %d terminal batches", len(tr.batches))
	}
	if v := testutil.ToFloat64(m.Processed.WithLabelValues(ChunkCompleted)); v != 1 {
		t.Fatalf("completed = %v, want 1", v)
	}
}

func TestChunkTrackerFreshLeaderSkipsUnknownHistory(t *testing.T) {
	m := NewChunkMetrics(prometheus.NewPedanticRegistry())
	tr := NewChunkTracker(m)
	// A new leader first sees a chunk that was leased before (attempts 1,
	// pending again): how long it waited is unknown, so nothing is
	// recorded when it is leased.
	b := &vbatchv1.Batch{Id: "batch_y", Status: vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS, InProgressAt: 1000,
		Chunks: []*vbatchv1.Chunk{{StartLine: 0, EndLine: 10, State: vbatchv1.ChunkState_CHUNK_STATE_PENDING, Attempts: 1}}}
	tr.Observe(time.Unix(2000, 0), b)
	b.Chunks[0].State = vbatchv1.ChunkState_CHUNK_STATE_LEASED
	b.Chunks[0].Lease = &vbatchv1.Lease{Token: 3, GrantedAt: 2001_000}
	tr.Observe(time.Unix(2002, 0), b)
	if n, _ := histogramOf(t, m.QueueWait); n != 0 {
		t.Fatalf("queue wait observed %d times for a chunk of unknown history", n)
	}
	// A lease replaced between two looks counts as requeued.
	b.Chunks[0].Lease = &vbatchv1.Lease{Token: 9, GrantedAt: 2010_000}
	tr.Observe(time.Unix(2011, 0), b)
	if v := testutil.ToFloat64(m.Processed.WithLabelValues(ChunkRequeued)); v != 1 {
		t.Fatalf("requeued = %v, want 1", v)
	}
}

func TestChunkTrackerRetain(t *testing.T) {
	tr := NewChunkTracker(NewChunkMetrics(prometheus.NewPedanticRegistry()))
	for _, id := range []string{"batch_run", "batch_end"} {
		tr.Observe(time.Unix(1000, 0), &vbatchv1.Batch{Id: id, Status: vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS,
			Chunks: []*vbatchv1.Chunk{{EndLine: 10, State: vbatchv1.ChunkState_CHUNK_STATE_PENDING}}})
	}
	tr.Retain(func(id string) bool { return id == "batch_run" })
	if _, ok := tr.batches["batch_end"]; ok || len(tr.batches) != 1 {
		t.Fatalf("after Retain the tracker holds %v", tr.batches)
	}
}
