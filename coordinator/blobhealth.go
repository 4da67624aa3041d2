package coordinator

import (
	"sync"
	"time"

	"github.com/vbatch/vbatch/coordinator/blob"
	"github.com/vbatch/vbatch/monitoring"
)

// blobHealth is what the last repair pass left of this node's blob store:
// how many referenced blobs it still lacks, and what it holds. Scrapes
// read it rather than walk the store.
type blobHealth struct {
	mu          sync.Mutex
	measured    bool
	missing     int
	storedBytes int64
	stored      int
	// usageAt is when the store's content was last measured: that walks
	// every blob, so it is done once per usagePasses repair passes.
	usageAt time.Time
}

// usagePasses is how many repair passes go by between measurements of the
// store's content (5 minutes with the default 30 s repair interval).
const usagePasses = 10

// update counts the referenced blobs the store lacks and, once per
// usagePasses passes of interval, the store's content; a store that cannot
// be listed keeps the last figures.
func (h *blobHealth) update(s *blob.Store, referenced map[string]struct{}, interval time.Duration) {
	missing := 0
	for sha := range referenced {
		if blob.ValidSHA(sha) && !s.Has(sha) {
			missing++
		}
	}
	h.mu.Lock()
	due := h.usageAt.IsZero() || time.Since(h.usageAt) >= usagePasses*interval
	h.measured, h.missing = true, missing
	h.mu.Unlock()
	if !due {
		return
	}
	bytes, count, err := s.Usage()
	if err != nil {
		return
	}
	h.mu.Lock()
	h.storedBytes, h.stored, h.usageAt = bytes, count, time.Now()
	h.mu.Unlock()
}

// blobView is monitoring.BlobView over this coordinator's store, its
// scrubber and the last repair pass.
type blobView struct{ c *Coordinator }

var _ monitoring.BlobView = blobView{}

// Corruptions implements monitoring.BlobView.
func (v blobView) Corruptions() int64 { return v.c.blobs.Corruptions() }

// ScrubbedBytes implements monitoring.BlobView.
func (v blobView) ScrubbedBytes() int64 { return v.c.scrub.ScrubbedBytes() }

// LastScrubPass implements monitoring.BlobView.
func (v blobView) LastScrubPass() time.Time { return v.c.scrub.LastPass() }

// ScrubRunningSince implements monitoring.BlobView.
func (v blobView) ScrubRunningSince() time.Time { return v.c.scrub.PassRunningSince() }

// Stored implements monitoring.BlobView.
func (v blobView) Stored() (missing, count int, bytes int64, ok bool) {
	h := &v.c.blobHealth
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.missing, h.stored, h.storedBytes, h.measured
}
