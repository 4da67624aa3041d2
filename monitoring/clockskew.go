package monitoring

import "github.com/prometheus/client_golang/prometheus"

// ClockSkewCollector exports vbatch_clock_skew_seconds{server}: on the raft
// leader, how far each other coordinator's wall clock is from the
// leader's (positive: ahead). Lease expiries are judged on the leader's
// clock, so a coordinator off by more than the lease TTL cannot grant
// leases. Followers export nothing.
type ClockSkewCollector struct {
	skews func() map[string]float64
	desc  *prometheus.Desc
}

// NewClockSkewCollector returns the collector; skews is read at scrape
// time (nil or empty on a follower).
func NewClockSkewCollector(skews func() map[string]float64) *ClockSkewCollector {
	return &ClockSkewCollector{
		skews: skews,
		desc: prometheus.NewDesc("vbatch_clock_skew_seconds",
			"On the raft leader: how far each other coordinator's wall clock is from the leader's, in seconds (positive: ahead), measured on autopilot's status calls to within half a round trip.",
			[]string{"server"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ClockSkewCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *ClockSkewCollector) Collect(ch chan<- prometheus.Metric) {
	for id, s := range c.skews() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, s, id)
	}
}
