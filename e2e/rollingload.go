package e2e

// API load for the rolling-restart and kill-all tests: client goroutines
// that call the API round-robin over the coordinators while processes go
// down and come back, and classify every answer. A request may fail only
// with a retryable status (429, 5xx) or, when the coordinator it went to
// was down at some moment of the request, with a connection error.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// rollDown tracks which coordinators the test has taken down. A
// coordinator is down from just before its signal until its restarted
// process answers /health; every change bumps its epoch, so a request that
// overlapped a down period is recognised even when it ended after it.
type rollDown struct {
	mu    sync.Mutex
	down  []bool
	epoch []uint64
}

func newRollDown(n int) *rollDown {
	return &rollDown{down: make([]bool, n), epoch: make([]uint64, n)}
}

// set marks coordinator i down or up.
func (d *rollDown) set(i int, down bool) {
	d.mu.Lock()
	d.down[i] = down
	d.epoch[i]++
	d.mu.Unlock()
}

// state returns whether coordinator i is down and its epoch.
func (d *rollDown) state(i int) (bool, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.down[i], d.epoch[i]
}

// rollLoad runs the clients and keeps what they saw. The batch under test
// and the acknowledged uploads are kept in a chaos history, so that the
// chaos invariant checker (check in chaosinv.go) judges them.
type rollLoad struct {
	rc   *rollCluster
	hc   *http.Client
	h    *history
	tb   *trackedBatch
	rr   atomic.Uint64 // round-robin cursor over coordinators
	stop chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	requests  map[string]int // per operation
	retryable map[int]int    // per status
	downErrs  int            // connection errors to a coordinator that was down
	acked     []time.Time    // when each upload was acknowledged
	failures  []string       // requests that failed any other way
}

func newRollLoad(rc *rollCluster, h *history, tb *trackedBatch) *rollLoad {
	return &rollLoad{
		rc: rc, h: h, tb: tb, stop: make(chan struct{}),
		hc:       &http.Client{Timeout: 10 * time.Second},
		requests: map[string]int{}, retryable: map[int]int{},
	}
}

// rollAnswer is what one request got back. transport is set when the
// request failed below HTTP (dial, reset, timeout, short body).
type rollAnswer struct {
	status    int
	body      []byte
	err       error
	transport bool
}

// send does one request to coordinator i and reads the whole answer.
func (l *rollLoad) send(i int, method, path, contentType string, body []byte) rollAnswer {
	req, err := http.NewRequest(method, l.rc.Coords[i].URL()+path, bytes.NewReader(body))
	if err != nil {
		return rollAnswer{err: fmt.Errorf("new request: %w", err)}
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := l.hc.Do(req)
	if err != nil {
		return rollAnswer{err: err, transport: true}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return rollAnswer{status: resp.StatusCode, err: fmt.Errorf("read body: %w", err), transport: true}
	}
	return rollAnswer{status: resp.StatusCode, body: b}
}

// call runs one request of operation op to coordinator i through do and
// classifies the answer. It returns the answer when it is a 2xx the caller
// should go on with, nil otherwise.
func (l *rollLoad) call(op string, i int, do func() rollAnswer) *rollAnswer {
	down0, epoch0 := l.rc.down.state(i)
	a := do()
	down1, epoch1 := l.rc.down.state(i)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests[op]++
	switch {
	case a.transport && (down0 || down1 || epoch0 != epoch1):
		l.downErrs++
		return nil
	case a.err != nil:
		l.failures = append(l.failures, fmt.Sprintf("%s on %s (up): %v", op, l.rc.Coords[i].ID, a.err))
		return nil
	case a.status == http.StatusTooManyRequests || a.status >= 500:
		l.retryable[a.status]++
		return nil
	case a.status/100 != 2:
		l.failures = append(l.failures, fmt.Sprintf("%s on %s: status %d: %.200s", op, l.rc.Coords[i].ID, a.status, bytes.TrimSpace(a.body)))
		return nil
	}
	return &a
}

// fail records a request whose 2xx answer was wrong.
func (l *rollLoad) fail(format string, args ...any) {
	l.mu.Lock()
	l.failures = append(l.failures, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// next picks the next coordinator round-robin.
func (l *rollLoad) next() int {
	return int(l.rr.Add(1) % uint64(len(l.rc.Coords)))
}

// pause waits d or until stop; false means stop.
func (l *rollLoad) pause(d time.Duration) bool {
	select {
	case <-l.stop:
		return false
	case <-time.After(d):
		return true
	}
}

// start runs one reader (consistent reads of the batch, lists of batches
// and files) and uploaders clients that upload small files and read each
// back through another coordinator.
func (l *rollLoad) start(uploaders int) {
	l.wg.Add(1 + uploaders)
	go func() {
		defer l.wg.Done()
		l.reader()
	}()
	for u := 0; u < uploaders; u++ {
		go func() {
			defer l.wg.Done()
			l.uploader(fmt.Sprintf("roll-u%d", u))
		}()
	}
}

// halt stops the clients and waits for them.
func (l *rollLoad) halt() {
	close(l.stop)
	l.wg.Wait()
}

// reader is the only goroutine that records the batch's statuses, so its
// observations are in real-time order, as checkMonotonic needs.
func (l *rollLoad) reader() {
	for n := 0; l.pause(50 * time.Millisecond); n++ {
		i := l.next()
		switch n % 3 {
		case 0:
			a := l.call("get batch", i, func() rollAnswer {
				return l.send(i, http.MethodGet, "/v1/batches/"+l.tb.ID+"?consistent=true", "", nil)
			})
			if a == nil {
				continue
			}
			var b chaosBatch
			if err := json.Unmarshal(a.body, &b); err != nil || b.ID != l.tb.ID {
				l.fail("get batch on %s: answer %.200s: %v", l.rc.Coords[i].ID, a.body, err)
				continue
			}
			l.h.observe(l.tb, &b)
		case 1:
			l.list(i, "list batches", "/v1/batches?limit=10&consistent=true", l.tb.ID)
		case 2:
			l.list(i, "list files", "/v1/files?limit=10&consistent=true", "")
		}
	}
}

// list GETs a list endpoint and checks the answer is a list; want, when
// set, must be among the ids (the batch under test is always the newest).
func (l *rollLoad) list(i int, op, path, want string) {
	a := l.call(op, i, func() rollAnswer { return l.send(i, http.MethodGet, path, "", nil) })
	if a == nil {
		return
	}
	var page struct {
		Object string `json:"object"`
		Data   []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(a.body, &page); err != nil || page.Object != "list" {
		l.fail("%s on %s: answer %.200s: %v", op, l.rc.Coords[i].ID, a.body, err)
		return
	}
	if want == "" {
		return
	}
	for _, d := range page.Data {
		if d.ID == want {
			return
		}
	}
	l.fail("%s on %s: %s missing from a consistent list", op, l.rc.Coords[i].ID, want)
}

// uploader uploads a small distinct file, then reads it back through the
// next coordinator; every acknowledged upload is recorded for the final
// check on every coordinator.
func (l *rollLoad) uploader(name string) {
	for n := 0; l.pause(100 * time.Millisecond); n++ {
		data := chaosLines(fmt.Sprintf("%s-f%d", name, n), 5)
		ct, body, err := rollMultipart(fmt.Sprintf("%s-%d.jsonl", name, n), data)
		if err != nil {
			l.fail("build upload: %v", err)
			return
		}
		i := l.next()
		a := l.call("upload", i, func() rollAnswer { return l.send(i, http.MethodPost, "/v1/files", ct, body) })
		if a == nil {
			continue
		}
		var f struct {
			ID    string `json:"id"`
			Bytes int    `json:"bytes"`
		}
		if err := json.Unmarshal(a.body, &f); err != nil || f.ID == "" || f.Bytes != len(data) {
			l.fail("upload on %s: acknowledged with %.200s: %v", l.rc.Coords[i].ID, a.body, err)
			continue
		}
		l.h.mu.Lock()
		l.h.uploads[f.ID] = sum256(data)
		l.h.mu.Unlock()
		l.mu.Lock()
		l.acked = append(l.acked, time.Now())
		l.mu.Unlock()
		j := l.next()
		a = l.call("read back", j, func() rollAnswer {
			return l.send(j, http.MethodGet, "/v1/files/"+f.ID+"/content", "", nil)
		})
		if a != nil && !bytes.Equal(a.body, data) {
			l.fail("read back %s on %s: %d bytes differ from the %d acknowledged", f.ID, l.rc.Coords[j].ID, len(a.body), len(data))
		}
	}
}

// rollMultipart builds the body of a batch-purpose file upload.
func rollMultipart(name string, data []byte) (contentType string, body []byte, err error) {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.WriteField("purpose", "batch"); err != nil {
		return "", nil, fmt.Errorf("multipart %s: %w", name, err)
	}
	fw, err := w.CreateFormFile("file", name)
	if err != nil {
		return "", nil, fmt.Errorf("multipart %s: %w", name, err)
	}
	if _, err := fw.Write(data); err != nil {
		return "", nil, fmt.Errorf("multipart %s: %w", name, err)
	}
	if err := w.Close(); err != nil {
		return "", nil, fmt.Errorf("multipart %s: %w", name, err)
	}
	return w.FormDataContentType(), b.Bytes(), nil
}

// firstAckAfter returns when the first upload acknowledged after t was
// acknowledged, and false if none was yet.
func (l *rollLoad) firstAckAfter(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.acked {
		if at.After(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// rollCounts is a summary of what the clients did.
type rollCounts struct {
	Requests  int
	PerOp     string
	Retryable int
	PerStatus string
	DownErrs  int
	Failures  []string
	Uploads   int
}

// counts summarises the clients' requests.
func (l *rollLoad) counts() rollCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	var c rollCounts
	var ops, sts []string
	for op, n := range l.requests {
		c.Requests += n
		ops = append(ops, fmt.Sprintf("%s=%d", op, n))
	}
	for st, n := range l.retryable {
		c.Retryable += n
		sts = append(sts, fmt.Sprintf("%d=%d", st, n))
	}
	sort.Strings(ops)
	sort.Strings(sts)
	c.PerOp, c.PerStatus = strings.Join(ops, " "), strings.Join(sts, " ")
	c.DownErrs = l.downErrs
	c.Failures = append([]string(nil), l.failures...)
	l.h.mu.Lock()
	c.Uploads = len(l.h.uploads)
	l.h.mu.Unlock()
	return c
}
