package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vbatch/vbatch/monitoring"
)

// metrics are the figures the agent records as it works (defined in
// monitoring, the one place every metric is), on a private registry served
// at /metrics.
type metrics struct {
	registry *prometheus.Registry
	*monitoring.AgentMetrics
}

// Chunk outcomes, the status label of vllm_chunks_processed_total.
const (
	chunkCompleted = "completed"
	chunkReleased  = "released"
	chunkRevoked   = "revoked"
	chunkFailed    = "failed"
)

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &metrics{registry: reg, AgentMetrics: monitoring.NewAgentMetrics(reg)}
}

// observeRequest records one engine call.
func (m *metrics) observeRequest(code string, d time.Duration) {
	m.Requests.WithLabelValues(code).Inc()
	m.InferenceDuration.Observe(d.Seconds())
}
