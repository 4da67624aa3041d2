package sim

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names are vLLM's, so dashboards and the agent's engine stats read
// the simulator as they read vLLM.
const (
	metricRunning          = "vllm:num_requests_running"
	metricWaiting          = "vllm:num_requests_waiting"
	metricPromptTokens     = "vllm:prompt_tokens_total"
	metricGenerationTokens = "vllm:generation_tokens_total"
	metricRequestSuccess   = "vllm:request_success_total"
	metricE2ELatency       = "vllm:e2e_request_latency_seconds"
	metricTTFT             = "vllm:time_to_first_token_seconds"
)

// serverMetrics are the simulator's Prometheus metrics in a private
// registry, so several simulators can live in one process.
type serverMetrics struct {
	registry         *prometheus.Registry
	promptTokens     *prometheus.CounterVec
	generationTokens *prometheus.CounterVec
	success          *prometheus.CounterVec
	e2e              *prometheus.HistogramVec
	ttft             *prometheus.HistogramVec
}

func newServerMetrics(s *Server) *serverMetrics {
	m := &serverMetrics{
		registry: prometheus.NewRegistry(),
		promptTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPromptTokens, Help: "Number of prefill tokens processed.",
		}, []string{"model_name"}),
		generationTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricGenerationTokens, Help: "Number of generation tokens processed.",
		}, []string{"model_name"}),
		success: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricRequestSuccess, Help: "Count of successfully processed requests.",
		}, []string{"model_name", "finished_reason"}),
		// Buckets are vLLM's.
		e2e: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricE2ELatency,
			Help:    "Histogram of end to end request latency in seconds.",
			Buckets: []float64{0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680},
		}, []string{"model_name"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricTTFT,
			Help:    "Histogram of time to first token in seconds.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560},
		}, []string{"model_name"}),
	}
	m.registry.MustRegister(m.promptTokens, m.generationTokens, m.success, m.e2e, m.ttft, queueCollector{s})
	// Every series exists from the start, as vLLM's do, so a scraper sees
	// zeros rather than nothing before the first request.
	for _, name := range s.cfg.Models {
		m.promptTokens.WithLabelValues(name)
		m.generationTokens.WithLabelValues(name)
		m.success.WithLabelValues(name, "length")
	}
	return m
}

// observe records one successful request.
func (m *serverMetrics) observe(model string, prompt, generated int, e2e, ttft time.Duration) {
	m.promptTokens.WithLabelValues(model).Add(float64(prompt))
	m.generationTokens.WithLabelValues(model).Add(float64(generated))
	m.success.WithLabelValues(model, "length").Inc()
	m.e2e.WithLabelValues(model).Observe(e2e.Seconds())
	m.ttft.WithLabelValues(model).Observe(ttft.Seconds())
}

// queueCollector reports the running and waiting gauges from the server's
// live counters at scrape time.
type queueCollector struct{ s *Server }

var (
	runningDesc = prometheus.NewDesc(metricRunning, "Number of requests in model execution batches.", []string{"model_name"}, nil)
	waitingDesc = prometheus.NewDesc(metricWaiting, "Number of requests waiting to be processed.", []string{"model_name"}, nil)
)

// Describe implements prometheus.Collector.
func (c queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- runningDesc
	ch <- waitingDesc
}

// Collect implements prometheus.Collector.
func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	for name, st := range c.s.models {
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(st.running.Load()), name)
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(st.waiting.Load()), name)
	}
}
