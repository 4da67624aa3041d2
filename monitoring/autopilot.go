package monitoring

import "github.com/prometheus/client_golang/prometheus"

// AutopilotView is the leader's autopilot state as the metrics show it.
type AutopilotView struct {
	Healthy          bool
	FailureTolerance int
	// Servers maps each raft server's id to its health.
	Servers map[string]bool
}

// autopilotCollector exposes the leader's autopilot state at scrape time,
// fetched through fetch (locally on the leader, over RPC elsewhere), so
// every coordinator shows the same figures.
type autopilotCollector struct {
	fetch            func() *AutopilotView
	healthy, ft, srv *prometheus.Desc
}

// NewAutopilotCollector returns the collector of the vbatch_autopilot_*
// metrics. fetch returns nil when no leader state is available; the
// metrics are then absent from that scrape.
func NewAutopilotCollector(fetch func() *AutopilotView) prometheus.Collector {
	return &autopilotCollector{
		fetch: fetch,
		healthy: prometheus.NewDesc("vbatch_autopilot_healthy",
			"1 when autopilot finds every raft server healthy (alive, in contact with the leader, caught up), else 0.", nil, nil),
		ft: prometheus.NewDesc("vbatch_autopilot_failure_tolerance",
			"How many voting coordinators may fail with quorum kept, as autopilot computes it.", nil, nil),
		srv: prometheus.NewDesc("vbatch_autopilot_server_healthy",
			"1 when autopilot finds the raft server healthy, else 0.", []string{"server"}, nil),
	}
}

// Describe sends the metric descriptions.
func (c *autopilotCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.healthy
	ch <- c.ft
	ch <- c.srv
}

// Collect fetches the leader's state and sends it.
func (c *autopilotCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.fetch()
	if v == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, boolFloat(v.Healthy))
	ch <- prometheus.MustNewConstMetric(c.ft, prometheus.GaugeValue, float64(v.FailureTolerance))
	for id, ok := range v.Servers {
		ch <- prometheus.MustNewConstMetric(c.srv, prometheus.GaugeValue, boolFloat(ok), id)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NewCertExpiryGauge is vbatch_tls_certificate_expiry_timestamp_seconds:
// when this node's TLS certificate runs out (Unix seconds), read at scrape
// time so a SIGHUP reload shows at once. Alert well before it.
func NewCertExpiryGauge(expires func() int64) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vbatch_tls_certificate_expiry_timestamp_seconds",
		Help: "When this node's TLS certificate expires, in Unix seconds.",
	}, func() float64 { return float64(expires()) })
}
