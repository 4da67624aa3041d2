// Package monitoring is the one place where vbatch's Prometheus metrics are
// defined, together with logging setup.
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
}

// NewCoordinatorMetrics registers the coordinator metrics on reg.
func NewCoordinatorMetrics(reg prometheus.Registerer) *CoordinatorMetrics {
	m := &CoordinatorMetrics{
		StaleResultsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_stale_results_refused_total",
			Help: "Result parts refused because their lease's fencing token was stale.",
		}),
		ApplyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vbatch_raft_apply_duration_seconds",
			Help:    "Time from proposing a command on the leader to its commit and apply.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	reg.MustRegister(m.ApplyDuration, m.StaleResultsRefused)
	return m
}

// ObserveApply records one apply.
func (m *CoordinatorMetrics) ObserveApply(d time.Duration) {
	if m != nil {
		m.ApplyDuration.Observe(d.Seconds())
	}
}
