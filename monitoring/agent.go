package monitoring

import (
	"github.com/prometheus/client_golang/prometheus"
)

// AgentMetrics are the figures an agent records as it works, served on its
// --metrics-addr. Their names match the coordinator's where the meaning is
// the same; dashboards tell them apart by the job label.
type AgentMetrics struct {
	// Requests counts engine requests by HTTP status ("error": no answer).
	Requests *prometheus.CounterVec
	// LeasesHeld is the number of chunk leases held now.
	LeasesHeld prometheus.Gauge
	// PartsCommitted counts committed result parts.
	PartsCommitted prometheus.Counter
	// TokensGenerated counts output tokens of successful requests.
	TokensGenerated prometheus.Counter
	// InferenceDuration is the duration of one engine request.
	InferenceDuration prometheus.Histogram
	// ChunksProcessed counts leases the agent finished, by outcome.
	ChunksProcessed *prometheus.CounterVec
	// EngineCrashes counts batch requests the engine died under.
	EngineCrashes prometheus.Counter
	// CrashingRequests counts batch requests failed with code
	// engine_crashed: they crashed the engine each time they ran alone.
	CrashingRequests prometheus.Counter
}

// NewAgentMetrics registers the agent metrics on reg.
func NewAgentMetrics(reg prometheus.Registerer) *AgentMetrics {
	m := &AgentMetrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vbatch_agent_requests_total",
			Help: "Batch requests the agent sent to its engine, by HTTP status code (\"error\" for no response).",
		}, []string{LabelCode}),
		LeasesHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vbatch_agent_leases_held",
			Help: "Chunk leases the agent holds now.",
		}),
		PartsCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_agent_parts_committed_total",
			Help: "Result parts the agent committed.",
		}),
		TokensGenerated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vllm_tokens_generated_total",
			Help: "Output tokens of successful batch requests.",
		}),
		InferenceDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vllm_inference_duration_seconds",
			Help:    "Duration of one engine request of a batch line, retries counted separately.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}),
		ChunksProcessed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_chunks_processed_total",
			Help: "Chunk leases the agent finished, by outcome (completed, released, revoked, failed).",
		}, []string{LabelStatus}),
		EngineCrashes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_agent_engine_crashes_total",
			Help: "Batch requests the engine died under (the engine was unhealthy after the request lost its connection).",
		}),
		CrashingRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vbatch_agent_crashing_requests_total",
			Help: "Batch requests failed with code engine_crashed because the engine crashed each time they ran alone.",
		}),
	}
	reg.MustRegister(m.Requests, m.LeasesHeld, m.PartsCommitted, m.TokensGenerated, m.InferenceDuration, m.ChunksProcessed, m.EngineCrashes, m.CrashingRequests)
	return m
}
