// Package monitoring is the one place where vbatch's Prometheus metrics are
// defined, together with logging setup.
//
// A coordinator exports two kinds of figures. State figures (batches by
// status, queue depth, workers, GPUs, raft) are computed at scrape time by
// ClusterCollector from the replicated state and the latest agent
// telemetry, so every coordinator shows the whole cluster. Event figures
// (API requests, uploads, chunk events seen by the leader) are counted as
// they happen on the coordinator that saw them.
package monitoring

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CoordinatorMetrics are the figures a coordinator records as it goes;
// state figures (leader, term, indexes, batches) are read at scrape time.
type CoordinatorMetrics struct {
	ApplyDuration prometheus.Histogram
	// StaleResultsRefused counts parts and completions refused because their
	// fencing token was no longer the chunk's live lease.
	StaleResultsRefused prometheus.Counter
	// ChunksCompletedByPart counts chunks this coordinator completed with
	// their last part (one CompletePart entry) rather than a Complete call.
	ChunksCompletedByPart prometheus.Counter
	// CommitNotices counts the raft barriers this node, as leader,
	// appended so that followers learn of the last commit at once rather
	// than at raft's next idle AppendEntries.
	CommitNotices prometheus.Counter
	// HTTP are the API request figures, recorded by InstrumentHTTP.
	HTTP *HTTPMetrics
	// Chunks are the chunk events the leader observes (ChunkTracker).
	Chunks *ChunkMetrics
	// XIDErrors counts GPU XID error events agents report in telemetry.
	XIDErrors *prometheus.CounterVec
	// AutopilotRemoved counts coordinators autopilot removed from raft
	// after they stayed out of gossip past the grace period.
	AutopilotRemoved prometheus.Counter
	// LostState is 1 while this node, started without raft state, stays
	// out of raft because the cluster counts it as a voter that held some.
	LostState prometheus.Gauge
	// LostStateRemoved counts voters this node, as leader, removed from
	// raft because they restarted without their raft state.
	LostStateRemoved prometheus.Counter
	// SlowDiskTransfers counts the times this node, as leader, handed
	// leadership away because its raft log writes stayed slow.
	SlowDiskTransfers prometheus.Counter
	// BlobGCSkipped counts blob garbage-collection passes skipped because
	// this node could not confirm that its state is current.
	BlobGCSkipped prometheus.Counter
	// FilesMerged counts result files whose parts this node, as leader,
	// merged into one blob.
	FilesMerged prometheus.Counter
	// LeasesResumed counts leases this node gave again to an agent whose
	// Lease call was granted but never answered (the answer was lost).
	LeasesResumed prometheus.Counter
}

// NewCoordinatorMetrics registers the coordinator metrics on reg.
func NewCoordinatorMetrics(reg prometheus.Registerer) *CoordinatorMetrics {
	m := &CoordinatorMetrics{
		StaleResultsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_stale_results_refused_total",
			Help: "Result parts refused because their lease's fencing token was stale.",
		}),
		ChunksCompletedByPart: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_chunks_completed_by_part_total",
			Help: "Chunks this coordinator completed with their last result part (CompletePart), without a separate Complete call.",
		}),
		CommitNotices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_raft_commit_notices_total",
			Help: "Raft barriers this coordinator, as leader, appended after a burst of writes so that followers learn of the last commit at once.",
		}),
		ApplyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vbatch_raft_apply_duration_seconds",
			Help:    "Time from proposing a command on the leader to its commit and apply.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		XIDErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_gpu_xid_errors_total",
			Help: "GPU XID error events agents reported to this coordinator.",
		}, []string{LabelAgent}),
		AutopilotRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_autopilot_dead_servers_removed_total",
			Help: "Coordinators this node, as leader, removed from raft after they were gone from gossip past the grace period.",
		}),
		LostState: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vbatch_raft_lost_state",
			Help: "1 while this coordinator, started without raft state, stays out of raft because the cluster counts it as a voter that had some (a wiped data dir).",
		}),
		LostStateRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_raft_lost_state_servers_removed_total",
			Help: "Voters this node, as leader, removed from raft because they restarted without their raft state; each joins again as a new server.",
		}),
		SlowDiskTransfers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_raft_slow_disk_transfers_total",
			Help: "Times this node, as leader, handed leadership to a follower because its own raft log writes stayed slow.",
		}),
		BlobGCSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_blob_gc_skipped_total",
			Help: "Blob garbage-collection passes this coordinator skipped because it could not confirm with a leader that its state is current (no leader, or still catching up).",
		}),
		FilesMerged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_files_merged_total",
			Help: "Result files whose parts this coordinator, as leader, merged into one blob.",
		}),
		LeasesResumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_leases_resumed_total",
			Help: "Leases this coordinator gave again to an agent that retried a Lease call whose grant it never received (the answer was lost), instead of leaving the chunk idle until the lease ran out.",
		}),
		HTTP:   NewHTTPMetrics(reg),
		Chunks: NewChunkMetrics(reg),
	}
	reg.MustRegister(m.ApplyDuration, m.StaleResultsRefused, m.ChunksCompletedByPart, m.CommitNotices, m.XIDErrors, m.AutopilotRemoved, m.LostState, m.LostStateRemoved, m.SlowDiskTransfers, m.BlobGCSkipped, m.FilesMerged, m.LeasesResumed)
	return m
}

// ObserveApply records one apply.
func (m *CoordinatorMetrics) ObserveApply(d time.Duration) {
	if m != nil {
		m.ApplyDuration.Observe(d.Seconds())
	}
}

// ObserveXIDs records the XID events of one telemetry report.
func (m *CoordinatorMetrics) ObserveXIDs(agent string, events int) {
	if m != nil && events > 0 {
		m.XIDErrors.WithLabelValues(agent).Add(float64(events))
	}
}

// Error counts one error of the given type in vllm_errors_total.
func (m *CoordinatorMetrics) Error(typ string) {
	if m != nil {
		m.HTTP.Errors.WithLabelValues(typ).Inc()
	}
}
