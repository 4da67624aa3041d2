package monitoring

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// ChunkMetrics are the chunk figures the raft leader records as it sees
// chunks change state. Only the leader observes, so the cluster's figure is
// the sum over coordinators (a node keeps what it counted while leader).
type ChunkMetrics struct {
	// Duration is the time from a lease's grant to its chunk being done.
	Duration prometheus.Histogram
	// Size is the number of requests (input lines) of each finished chunk.
	Size prometheus.Histogram
	// QueueWait is how long a chunk waited pending before a lease.
	QueueWait prometheus.Histogram
	// Processed counts finished leases by outcome (ChunkCompleted,
	// ChunkRequeued).
	Processed *prometheus.CounterVec
}

// NewChunkMetrics registers the chunk metrics on reg.
func NewChunkMetrics(reg prometheus.Registerer) *ChunkMetrics {
	m := &ChunkMetrics{
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vllm_chunk_processing_duration_seconds",
			Help:    "Time from a chunk's lease grant to the chunk being done, observed by the raft leader.",
			Buckets: []float64{1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200},
		}),
		Size: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vllm_chunk_size",
			Help:    "Requests (input lines) of each chunk done, observed by the raft leader.",
			Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000},
		}),
		QueueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vllm_queue_wait_time_seconds",
			Help:    "Time a chunk waited pending (since its batch started or its last lease ended) before an agent leased it, observed by the raft leader.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		}),
		Processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_chunks_processed_total",
			Help: "Chunk leases that ended, by outcome: completed, or requeued (expired, released, agent gone), observed by the raft leader.",
		}, []string{LabelStatus}),
	}
	reg.MustRegister(m.Duration, m.Size, m.QueueWait, m.Processed)
	for _, s := range []string{ChunkCompleted, ChunkRequeued} {
		m.Processed.WithLabelValues(s)
	}
	return m
}

// chunkObs is what the tracker last saw of one chunk.
type chunkObs struct {
	state vbatchv1.ChunkState
	// token is the live lease's fencing token when leased.
	token uint64
	// grantedMs is the live lease's grant time, Unix ms.
	grantedMs int64
	// pendingMs is when the chunk became pending, Unix ms; 0 when unknown.
	pendingMs int64
}

// ChunkTracker turns the chunk state the leader sees on each tick into
// chunk events. It lives as long as one leadership: a new leader starts a
// fresh tracker and so never counts what the previous leader counted.
// It is not safe for concurrent use.
type ChunkTracker struct {
	m       *ChunkMetrics
	batches map[string][]chunkObs
}

// NewChunkTracker returns a tracker recording into m.
func NewChunkTracker(m *ChunkMetrics) *ChunkTracker {
	return &ChunkTracker{m: m, batches: map[string][]chunkObs{}}
}

// Observe compares a batch with what the tracker last saw of it and
// records the chunk transitions. Call it for every batch still running on
// each look at the state (and Retain to forget those that ended), or for
// every batch: it forgets a terminal one it is shown.
func (t *ChunkTracker) Observe(now time.Time, b *vbatchv1.Batch) {
	if t == nil || t.m == nil {
		return
	}
	prev, tracked := t.batches[b.Id]
	if fsm.IsTerminal(b.Status) {
		if tracked {
			delete(t.batches, b.Id)
		}
		return
	}
	if len(b.Chunks) == 0 {
		return
	}
	nowMs := now.UnixMilli()
	cur := make([]chunkObs, len(b.Chunks))
	for i, ch := range b.Chunks {
		o := chunkObs{state: ch.State}
		if ch.Lease != nil && ch.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED {
			o.token, o.grantedMs = ch.Lease.Token, ch.Lease.GrantedAt
		}
		if !tracked || i >= len(prev) {
			// First sight: a never-leased pending chunk has waited since
			// the batch started; anything else has an unknown history.
			if ch.State == vbatchv1.ChunkState_CHUNK_STATE_PENDING && ch.Attempts == 0 && b.InProgressAt > 0 {
				o.pendingMs = b.InProgressAt * 1000
			}
			cur[i] = o
			continue
		}
		p := prev[i]
		t.transition(p, &o, ch, nowMs)
		cur[i] = o
	}
	t.batches[b.Id] = cur
}

// Retain forgets the batches keep rejects (those that ended), for a caller
// that observes only the batches still running.
func (t *ChunkTracker) Retain(keep func(batchID string) bool) {
	if t == nil {
		return
	}
	for id := range t.batches {
		if !keep(id) {
			delete(t.batches, id)
		}
	}
}

// transition records what happened between two sights of one chunk.
func (t *ChunkTracker) transition(p chunkObs, o *chunkObs, ch *vbatchv1.Chunk, nowMs int64) {
	pending := vbatchv1.ChunkState_CHUNK_STATE_PENDING
	leased := vbatchv1.ChunkState_CHUNK_STATE_LEASED
	done := vbatchv1.ChunkState_CHUNK_STATE_DONE
	o.pendingMs = p.pendingMs
	switch {
	case p.state == done:
		// Done is final.
	case o.state == done:
		if p.state == leased && p.grantedMs > 0 {
			t.m.Duration.Observe(max(float64(nowMs-p.grantedMs)/1000, 0))
		}
		t.m.Size.Observe(float64(ch.EndLine - ch.StartLine))
		t.m.Processed.WithLabelValues(ChunkCompleted).Inc()
	case o.state == pending:
		if p.state == leased {
			t.m.Processed.WithLabelValues(ChunkRequeued).Inc()
			o.pendingMs = nowMs
		}
	case o.state == leased:
		switch {
		case p.state == pending:
			if p.pendingMs > 0 && o.grantedMs >= p.pendingMs {
				t.m.QueueWait.Observe(float64(o.grantedMs-p.pendingMs) / 1000)
			}
		case p.state == leased && p.token != o.token:
			// The lease ended and another was granted between two looks.
			t.m.Processed.WithLabelValues(ChunkRequeued).Inc()
		}
	}
}
