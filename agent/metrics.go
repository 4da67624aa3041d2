package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the figures the agent records as it works, on a private
// registry served at /metrics.
type metrics struct {
	registry *prometheus.Registry

	requests          *prometheus.CounterVec
	leasesHeld        prometheus.Gauge
	partsCommitted    prometheus.Counter
	tokensGenerated   prometheus.Counter
	inferenceDuration prometheus.Histogram
	chunksProcessed   *prometheus.CounterVec
}

// Chunk outcomes, the status label of vllm_chunks_processed_total.
const (
	chunkCompleted = "completed"
	chunkReleased  = "released"
	chunkRevoked   = "revoked"
	chunkFailed    = "failed"
)

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vbatch_agent_requests_total",
			Help: "Batch requests the agent sent to its engine, by HTTP status code (\"error\" for no response).",
		}, []string{"code"}),
		leasesHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vbatch_agent_leases_held",
			Help: "Chunk leases the agent holds now.",
		}),
		partsCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_agent_parts_committed_total",
			Help: "Result parts the agent committed.",
		}),
		tokensGenerated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vllm_tokens_generated_total",
			Help: "Output tokens of successful batch requests.",
		}),
		inferenceDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vllm_inference_duration_seconds",
			Help:    "Duration of one engine request of a batch line, retries counted separately.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}),
		chunksProcessed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_chunks_processed_total",
			Help: "Chunk leases the agent finished, by outcome (completed, released, revoked, failed).",
		}, []string{"status"}),
	}
	m.registry.MustRegister(m.requests, m.leasesHeld, m.partsCommitted, m.tokensGenerated,
		m.inferenceDuration, m.chunksProcessed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeRequest records one engine call.
func (m *metrics) observeRequest(code string, d time.Duration) {
	m.requests.WithLabelValues(code).Inc()
	m.inferenceDuration.Observe(d.Seconds())
}
