package e2e

// The linearizability harness: clients that create, cancel and read
// batches over HTTP through coordinators they pick at random, a test agent
// (linearize_agent.go) that leases and completes chunks over the real
// AgentService RPC, and a recorder that keeps every call with its answer
// and its real-time interval for porcupine (linearize_check.go).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Shape of the test's batches: small, so a batch runs to its end within a
// few seconds and every chunk and part is an operation in the history.
const (
	linChunkSize = 40 // the coordinators' --chunk-size
	linPartLines = 20 // lines per PutResults
	linMinLines  = 40
	linMaxLines  = 160 // at most linMaxLines/linChunkSize chunks
	linMetaKey   = "lin_key"
)

// linNever is the return time of an operation whose outcome is unknown: it
// may take effect at any point after its call.
const linNever = math.MaxInt64

// linHTTP is the clients' HTTP client: short, so an operation stuck on a
// frozen or dead coordinator becomes an unknown outcome quickly.
var linHTTP = &http.Client{Timeout: 3 * time.Second}

// linBurstHTTP is the prober's client during a burst: a read waiting for
// an election gives up soon, so that reads keep arriving fresh while a
// new leader takes over.
var linBurstHTTP = &http.Client{Timeout: 50 * time.Millisecond, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// linOp is one recorded operation.
type linOp struct {
	Client    int
	In        linInput
	Out       linOutput
	Call, Ret int64 // ns since the recorder started; Ret is linNever when unknown
	// BatchID is the batch the operation named, when known; agent
	// operations get their Key from it after the run.
	BatchID string
	// Node is the coordinator the call went to.
	Node string
}

// linRecorder keeps the history of one run.
type linRecorder struct {
	start time.Time

	mu  sync.Mutex
	ops []linOp
	// ambiguousLeases counts Lease calls with an unknown outcome: they name
	// no batch (see docs/reliability.md, Linearizability).
	ambiguousLeases int
	// known are batch ids clients learned, for reads of other clients'
	// batches.
	known []string
}

func newLinRecorder() *linRecorder { return &linRecorder{start: time.Now()} }

// now is the recorder's clock: monotonic nanoseconds since the start.
func (r *linRecorder) now() int64 { return int64(time.Since(r.start)) }

// add records op, whose call time the caller took before calling. A write
// with an unknown outcome returns at linNever: it may take effect at any
// later time. A read with an unknown outcome keeps the time its error came
// back: it has no effect and nothing to check, so where in its interval
// it is placed does not matter, and an interval to the end of time would
// only multiply porcupine's search.
func (r *linRecorder) add(op linOp) {
	op.Ret = r.now()
	if op.Out.Result == resUnknown && op.In.Kind != linRead {
		op.Ret = linNever
	}
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

func (r *linRecorder) learn(id string) {
	r.mu.Lock()
	r.known = append(r.known, id)
	r.mu.Unlock()
}

// randomKnown returns a batch id some client learned, or "": three times
// in four the k-th newest (k < 16), else any. A stale read shows only on
// a batch that changed lately (an old one is terminal in every state a
// coordinator may hold, snapshot or log); a fixed k per reader spreads
// concurrent readers over batches, which keeps each batch's history
// cheap for porcupine to search.
func (r *linRecorder) randomKnown(rng *rand.Rand, k int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.known)
	switch {
	case n == 0:
		return ""
	case rng.IntN(4) > 0:
		return r.known[n-1-k%min(n, 16)]
	default:
		return r.known[rng.IntN(n)]
	}
}

// linBatch is the part of a batch object the harness reads.
type linBatch struct {
	ID            string            `json:"id"`
	Status        string            `json:"status"`
	OutputFileID  string            `json:"output_file_id"`
	Metadata      map[string]string `json:"metadata"`
	RequestCounts struct {
		Total     int64 `json:"total"`
		Completed int64 `json:"completed"`
		Failed    int64 `json:"failed"`
	} `json:"request_counts"`
}

// linClassify turns an HTTP answer (or the error of getting one) into a
// result: only a 2xx, 404 or 409 says what happened; 5xx and transport
// errors say nothing.
func linClassify(resp *http.Response, err error) (linResult, string) {
	if err != nil {
		return resUnknown, err.Error()
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	detail := fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return resNotFound, detail
	case resp.StatusCode == http.StatusConflict:
		return resConflict, detail
	case resp.StatusCode >= 500:
		return resUnknown, detail
	default:
		return resRefused, detail
	}
}

// linDo runs one HTTP call and decodes a 2xx body into v.
func linDo(hc *http.Client, req *http.Request, v any) linOutput {
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode/100 != 2 {
		if resp != nil {
			defer resp.Body.Close()
		}
		res, detail := linClassify(resp, err)
		return linOutput{Result: res, Detail: detail}
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		// The answer was a 2xx, so the operation happened; a body cut off
		// by a dying coordinator still leaves its content unknown.
		return linOutput{Result: resUnknown, Detail: fmt.Sprintf("decode: %v", err)}
	}
	return linOutput{Result: resOK}
}

// create creates a batch over fileID tagged with key, and returns its id
// when the answer names it.
func (r *linRecorder) create(client int, co *Coordinator, key, fileID string, lines int64) (string, linResult) {
	body, _ := json.Marshal(map[string]any{
		"input_file_id": fileID, "endpoint": "/v1/chat/completions", "completion_window": "24h",
		"metadata": map[string]string{linMetaKey: key},
	})
	req, _ := http.NewRequest(http.MethodPost, co.URL()+"/v1/batches", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	op := linOp{Client: client, In: linInput{Kind: linCreate, Key: key, Lines: lines}, Call: r.now(), Node: co.ID}
	var b linBatch
	op.Out = linDo(linHTTP, req, &b)
	if op.Out.Result == resOK && b.ID == "" {
		op.Out = linOutput{Result: resUnknown, Detail: "2xx without a batch id"}
	}
	op.BatchID = b.ID
	r.add(op)
	if op.BatchID != "" {
		r.learn(op.BatchID)
	}
	return op.BatchID, op.Out.Result
}

// cancel cancels batch id (partition key) through co.
func (r *linRecorder) cancel(client int, co *Coordinator, key, id string) linOutput {
	req, _ := http.NewRequest(http.MethodPost, co.URL()+"/v1/batches/"+id+"/cancel", nil)
	op := linOp{Client: client, In: linInput{Kind: linCancel, Key: key}, Call: r.now(), BatchID: id, Node: co.ID}
	var b linBatch
	op.Out = linDo(linHTTP, req, &b)
	r.add(op)
	return op.Out
}

// read reads batch id with a consistent read through co.
func (r *linRecorder) read(hc *http.Client, client int, co *Coordinator, key, id string) linOutput {
	req, _ := http.NewRequest(http.MethodGet, co.URL()+"/v1/batches/"+id+"?consistent=true", nil)
	op := linOp{Client: client, In: linInput{Kind: linRead, Key: key}, Call: r.now(), BatchID: id, Node: co.ID}
	var b linBatch
	op.Out = linDo(hc, req, &b)
	if op.Out.Result == resOK {
		op.Out.Status, op.Out.Total = b.Status, b.RequestCounts.Total
		op.Out.Completed, op.Out.Failed = b.RequestCounts.Completed, b.RequestCounts.Failed
	}
	r.add(op)
	return op.Out
}

// listAll reads every batch with consistent list calls through co and
// records each batch of a page as a read that spans the page's call.
// Keys are left empty: the checker fills them in from the metadata.
func (r *linRecorder) listAll(ctx context.Context, client int, co *Coordinator) ([]linBatch, error) {
	var all []linBatch
	after := ""
	for {
		url := co.URL() + "/v1/batches?limit=100&consistent=true"
		if after != "" {
			url += "&after=" + after
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		call := r.now()
		var page struct {
			Data    []linBatch `json:"data"`
			HasMore bool       `json:"has_more"`
		}
		if out := linDo(linHTTP, req, &page); out.Result != resOK {
			return nil, fmt.Errorf("list batches after %q: %s %s", after, out.Result, out.Detail)
		}
		for _, b := range page.Data {
			r.add(linOp{Client: client, In: linInput{Kind: linRead}, Call: call, BatchID: b.ID, Node: co.ID, Out: linOutput{
				Result: resOK, Status: b.Status, Total: b.RequestCounts.Total,
				Completed: b.RequestCounts.Completed, Failed: b.RequestCounts.Failed,
			}})
		}
		all = append(all, page.Data...)
		if !page.HasMore || len(page.Data) == 0 {
			return all, nil
		}
		after = page.Data[len(page.Data)-1].ID
	}
}

// linClient is one HTTP client: it creates a batch, reads it (and now and
// then another client's) until it ends, cancels some, and starts the
// next, until stop closes.
type linClient struct {
	id   int
	rec  *linRecorder
	cc   *chaosCluster
	rng  *rand.Rand
	stop <-chan struct{}
	// creates counts this client's creates by outcome.
	creates map[linResult]int
}

// sleep waits d unless stop closes first; it reports whether to go on.
func (c *linClient) sleep(d time.Duration) bool {
	select {
	case <-c.stop:
		return false
	case <-time.After(d):
		return true
	}
}

func (c *linClient) coord() *Coordinator { return c.cc.Coords[c.rng.IntN(len(c.cc.Coords))] }

func (c *linClient) run() {
	for n := 0; ; n++ {
		key := fmt.Sprintf("c%d-%d", c.id, n)
		lines := int64(linMinLines + c.rng.IntN(linMaxLines-linMinLines+1))
		var fileID string
		for fileID == "" {
			id, err := chaosUpload(c.coord().URL(), key+".jsonl", chaosLines(key, int(lines)))
			if err == nil {
				fileID = id
			} else if !c.sleep(50 * time.Millisecond) {
				return
			}
		}
		id, res := c.rec.create(c.id, c.coord(), key, fileID, lines)
		c.creates[res]++
		if id == "" {
			// Unknown outcome: the batch may exist; the final listing
			// finds it by its key.
			if !c.sleep(50 * time.Millisecond) {
				return
			}
			continue
		}
		if !c.follow(key, id) {
			return
		}
	}
}

// follow reads batch id until it is terminal (or 20s pass), cancelling it
// with some chance and reading other batches in between.
func (c *linClient) follow(key, id string) bool {
	cancelAt := -1
	if c.rng.IntN(3) == 0 {
		cancelAt = c.rng.IntN(8)
	}
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		var out linOutput
		switch {
		case i == cancelAt:
			out = c.rec.cancel(c.id, c.coord(), key, id)
		case c.rng.IntN(5) == 0:
			// The key of another client's batch is not known here; the
			// checker fills it in from the batch id.
			out = c.rec.read(linHTTP, c.id, c.coord(), "", c.rec.randomKnown(c.rng, c.rng.IntN(16)))
		default:
			out = c.rec.read(linHTTP, c.id, c.coord(), key, id)
			if out.Result == resOK && linTerminal(out.Status) {
				return true
			}
		}
		pause := time.Duration(60+c.rng.IntN(80)) * time.Millisecond
		if out.Result == resUnknown {
			pause = 20 * time.Millisecond
		}
		if !c.sleep(pause) {
			return false
		}
	}
	return true
}
