package e2e

// Chaos clients and the invariant checker: what clients saw (acknowledged
// uploads, every observed batch status) and what the cluster wrote (output
// and error files), checked once the faults have healed.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"
)

// statusRank orders OpenAI batch statuses: a batch only ever moves to an
// equal or higher rank, and a terminal status never changes.
var statusRank = map[string]int{
	"validating": 0, "in_progress": 1, "finalizing": 2, "cancelling": 2,
	"completed": 3, "failed": 3, "expired": 3, "cancelled": 3,
}

func terminal(status string) bool { return statusRank[status] == 3 }

// observation is one status a client read.
type observation struct {
	Status string
	Done   int64 // completed + failed request counts
	At     time.Duration
}

// trackedBatch is one batch a client created, with what it saw.
type trackedBatch struct {
	ID, FileID, Prefix string
	Lines              int
	Seen               []observation
	Last               *chaosBatch
}

// history is what every client saw during one schedule.
type history struct {
	mu      sync.Mutex
	start   time.Time
	uploads map[string]string // acknowledged file id -> sha256
	batches []*trackedBatch
	errs    int // client requests that failed (retried)
}

func newHistory() *history {
	return &history{start: time.Now(), uploads: map[string]string{}}
}

func (h *history) failed() {
	h.mu.Lock()
	h.errs++
	h.mu.Unlock()
}

// observe records b as seen for tb. Each batch is polled by one goroutine
// at a time, so its observations are in real-time order.
func (h *history) observe(tb *trackedBatch, b *chaosBatch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	tb.Seen = append(tb.Seen, observation{Status: b.Status, Done: b.RequestCounts.Completed + b.RequestCounts.Failed, At: time.Since(h.start)})
	tb.Last = b
}

// chaosClient submits batches of 1k-5k lines and polls each until it is
// terminal, through coordinators it picks at random, until stop closes.
func chaosClient(cc *chaosCluster, h *history, rng *rand.Rand, name string, stop <-chan struct{}) {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	pause := func() bool {
		select {
		case <-stop:
			return false
		case <-time.After(300 * time.Millisecond):
			return true
		}
	}
	base := func() string { return cc.Coords[rng.IntN(len(cc.Coords))].URL() }
	for n := 0; !stopped(); n++ {
		tb := &trackedBatch{Prefix: fmt.Sprintf("%s-b%d", name, n), Lines: 1000 + rng.IntN(4001)}
		data := chaosLines(tb.Prefix, tb.Lines)
		for tb.FileID == "" {
			id, err := chaosUpload(base(), tb.Prefix+".jsonl", data)
			if err == nil {
				tb.FileID = id
				h.mu.Lock()
				h.uploads[id] = sum256(data)
				h.mu.Unlock()
				break
			}
			h.failed()
			if !pause() {
				return
			}
		}
		for tb.ID == "" {
			b, err := chaosCreateBatch(base(), tb.FileID)
			if err == nil {
				tb.ID = b.ID
				h.mu.Lock()
				h.batches = append(h.batches, tb)
				h.mu.Unlock()
				h.observe(tb, b)
				break
			}
			h.failed()
			if !pause() {
				return
			}
		}
		for !terminal(tb.Last.Status) {
			if !pause() {
				return
			}
			b, err := chaosGetBatch(base(), tb.ID)
			if err != nil {
				h.failed()
				continue
			}
			h.observe(tb, b)
		}
	}
}

// drain polls every batch not yet terminal until it is or deadline passes.
func drain(cc *chaosCluster, h *history, deadline time.Time) {
	h.mu.Lock()
	batches := append([]*trackedBatch(nil), h.batches...)
	h.mu.Unlock()
	for _, tb := range batches {
		for i := 0; !terminal(tb.Last.Status) && time.Now().Before(deadline); i++ {
			b, err := chaosGetBatch(cc.Coords[i%len(cc.Coords)].URL(), tb.ID)
			if err != nil {
				h.failed()
			} else {
				h.observe(tb, b)
			}
			if !terminal(tb.Last.Status) {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
}

// invariants are the results of one schedule's checks.
type invariants struct {
	ExactlyOnce, Uploads, Monotonic, Terminal []string // violations
	Lines                                     int
	// EngineCrashed counts error lines failed as engine_crashed. Chaos
	// input holds no request that crashes the engine, so each is an
	// innocent line blamed for engines killed under it: reported, as the
	// price of the isolation rules, not a violation of the invariants.
	EngineCrashed int
}

func (iv *invariants) total() int {
	return len(iv.ExactlyOnce) + len(iv.Uploads) + len(iv.Monotonic) + len(iv.Terminal)
}

// check runs every invariant over h against the healed cluster.
func check(cc *chaosCluster, h *history) *invariants {
	iv := &invariants{}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, tb := range h.batches {
		iv.Lines += tb.Lines
		checkMonotonic(iv, tb)
		if !terminal(tb.Last.Status) {
			iv.Terminal = append(iv.Terminal, fmt.Sprintf("%s (%d lines) still %s after the bound", tb.ID, tb.Lines, tb.Last.Status))
			continue
		}
		checkExactlyOnce(cc, iv, tb)
	}
	ids := make([]string, 0, len(h.uploads))
	for id := range h.uploads {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		for _, co := range cc.Coords {
			b, err := chaosContentSettled(co.URL(), id)
			if err != nil {
				iv.Uploads = append(iv.Uploads, fmt.Sprintf("%s on %s: %v", id, co.ID, err))
			} else if got := sum256(b); got != h.uploads[id] {
				iv.Uploads = append(iv.Uploads, fmt.Sprintf("%s on %s: sha256 %s, acknowledged %s", id, co.ID, got, h.uploads[id]))
			}
		}
	}
	return iv
}

func checkMonotonic(iv *invariants, tb *trackedBatch) {
	for i := 1; i < len(tb.Seen); i++ {
		prev, cur := tb.Seen[i-1], tb.Seen[i]
		back := statusRank[cur.Status] < statusRank[prev.Status] ||
			(terminal(prev.Status) && cur.Status != prev.Status) || cur.Done < prev.Done
		if back {
			iv.Monotonic = append(iv.Monotonic, fmt.Sprintf("%s: %s (%d done) at %s then %s (%d done) at %s",
				tb.ID, prev.Status, prev.Done, prev.At.Round(time.Millisecond), cur.Status, cur.Done, cur.At.Round(time.Millisecond)))
		}
	}
}

// checkExactlyOnce reads a terminal batch's output and error files from a
// coordinator and counts every custom_id. A completed or expired batch
// must hold each input exactly once; a cancelled one at most once; valid
// input never fails a batch.
func checkExactlyOnce(cc *chaosCluster, iv *invariants, tb *trackedBatch) {
	b := tb.Last
	if b.Status == "failed" {
		iv.ExactlyOnce = append(iv.ExactlyOnce, fmt.Sprintf("%s: valid input ended failed", tb.ID))
		return
	}
	seen := map[string]int{}
	base := cc.Coords[0].URL()
	for _, fid := range []string{b.OutputFileID, b.ErrorFileID} {
		if fid == "" {
			continue
		}
		data, err := chaosContentSettled(base, fid)
		if err != nil {
			iv.ExactlyOnce = append(iv.ExactlyOnce, fmt.Sprintf("%s: %v", tb.ID, err))
			return
		}
		for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			if l == "" {
				continue
			}
			var v struct {
				CustomID string `json:"custom_id"`
				Error    *struct {
					Code string `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(l), &v); err != nil {
				iv.ExactlyOnce = append(iv.ExactlyOnce, fmt.Sprintf("%s: result line is not JSON: %.80q", tb.ID, l))
				return
			}
			seen[v.CustomID]++
			if v.Error != nil && v.Error.Code == "engine_crashed" {
				iv.EngineCrashed++
			}
		}
	}
	var bad []string
	for i := 0; i < tb.Lines; i++ {
		id := fmt.Sprintf("%s-%d", tb.Prefix, i)
		n := seen[id]
		delete(seen, id)
		if n > 1 || (n == 0 && b.Status != "cancelled") {
			bad = append(bad, fmt.Sprintf("%s×%d", id, n))
		}
	}
	for id, n := range seen {
		bad = append(bad, fmt.Sprintf("unknown %s×%d", id, n))
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		if len(bad) > 5 {
			bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
		}
		iv.ExactlyOnce = append(iv.ExactlyOnce, fmt.Sprintf("%s (%s, %d lines): %s", tb.ID, b.Status, tb.Lines, strings.Join(bad, ", ")))
	}
}
