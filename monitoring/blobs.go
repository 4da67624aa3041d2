package monitoring

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BlobView is what a coordinator reports of its own blob store.
type BlobView interface {
	// Corruptions is how many stored copies failed verification (on a
	// read or a scrub) and were quarantined since the process started.
	Corruptions() int64
	// ScrubbedBytes is how many bytes scrub passes have read.
	ScrubbedBytes() int64
	// LastScrubPass is when the last complete scrub pass ended; zero if
	// none has.
	LastScrubPass() time.Time
	// ScrubRunningSince is when the scrub pass under way began; zero
	// between passes.
	ScrubRunningSince() time.Time
	// Stored is what the last repair pass found: referenced blobs this
	// node still lacks, and the blobs and bytes it holds; ok is false
	// before the first pass.
	Stored() (missing, count int, bytes int64, ok bool)
}

// BlobCollector exports a coordinator's blob store figures at scrape time.
// They are this node's own, unlike the cluster-wide state figures: each
// coordinator holds its own copies.
type BlobCollector struct {
	view                                 BlobView
	corrupt, scrubbed, lastPass, running *prometheus.Desc
	missing, storedBlobs, storedBytes    *prometheus.Desc
}

// NewBlobCollector returns the collector over view.
func NewBlobCollector(view BlobView) *BlobCollector {
	return &BlobCollector{
		view:        view,
		corrupt:     prometheus.NewDesc("vbatch_blob_corrupt_total", "Stored blob copies on this coordinator that failed verification (on a read or a scrub) and were quarantined; the repair pass fetches a good copy from a peer.", nil, nil),
		scrubbed:    prometheus.NewDesc("vbatch_blob_scrub_bytes_total", "Bytes the blob scrub read and verified on this coordinator.", nil, nil),
		running:     prometheus.NewDesc("vbatch_blob_scrub_pass_started_timestamp_seconds", "Unix time the blob scrub pass under way on this coordinator began (absent between passes).", nil, nil),
		lastPass:    prometheus.NewDesc("vbatch_blob_scrub_last_pass_timestamp_seconds", "Unix time the last complete blob scrub pass on this coordinator ended (absent before the first).", nil, nil),
		missing:     prometheus.NewDesc("vbatch_blobs_missing", "Blobs the replicated state references that this coordinator still lacks after its last repair pass.", nil, nil),
		storedBlobs: prometheus.NewDesc("vbatch_blobs_stored", "Blobs in this coordinator's store, measured every ten repair passes (5 minutes by default).", nil, nil),
		storedBytes: prometheus.NewDesc("vbatch_blob_stored_bytes", "Bytes of blob content in this coordinator's store, measured every ten repair passes (5 minutes by default).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *BlobCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.corrupt, c.scrubbed, c.lastPass, c.running, c.missing, c.storedBlobs, c.storedBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *BlobCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.corrupt, prometheus.CounterValue, float64(c.view.Corruptions()))
	ch <- prometheus.MustNewConstMetric(c.scrubbed, prometheus.CounterValue, float64(c.view.ScrubbedBytes()))
	if t := c.view.LastScrubPass(); !t.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastPass, prometheus.GaugeValue, float64(t.Unix()))
	}
	if t := c.view.ScrubRunningSince(); !t.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(t.Unix()))
	}
	if missing, count, bytes, ok := c.view.Stored(); ok {
		ch <- prometheus.MustNewConstMetric(c.missing, prometheus.GaugeValue, float64(missing))
		ch <- prometheus.MustNewConstMetric(c.storedBlobs, prometheus.GaugeValue, float64(count))
		ch <- prometheus.MustNewConstMetric(c.storedBytes, prometheus.GaugeValue, float64(bytes))
	}
}
