package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// batchSequence answers GET /v1/batches/{id} with each body in turn, then
// the last one forever; a body that starts with "!" is answered with 503.
func batchSequence(f *fakeServer, id string, bodies ...string) {
	var mu sync.Mutex
	i := 0
	f.handle("GET /v1/batches/"+id, func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		body := bodies[min(i, len(bodies)-1)]
		i++
		mu.Unlock()
		if strings.HasPrefix(body, "!") {
			writeBody(w, 503, openAIError(body[1:], "server_error", "service_unavailable"))
			return
		}
		writeBody(w, 200, body)
	})
}

// serveContent answers GET /v1/files/{id}/content from contents.
func serveContent(f *fakeServer, contents map[string]string) {
	f.handle("GET /v1/files/{id}/content", func(w http.ResponseWriter, r *http.Request) {
		c, ok := contents[r.PathValue("id")]
		if !ok {
			writeBody(w, 404, openAIError("No such File object: "+r.PathValue("id"), "invalid_request_error", "not_found"))
			return
		}
		_, _ = io.WriteString(w, c)
	})
}

const (
	outputContent = `{"id":"batch_req_1","custom_id":"r0","response":{"status_code":200,"body":{}},"error":null}` + "\n"
	errorContent  = `{"id":"batch_req_2","custom_id":"r1","response":null,"error":{"code":"bad_request","message":"x"}}` + "\n"
)

func TestBatchesSubmitWait(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "batch"))
	f.reply("POST /v1/batches", 200, batchJSON("batch_s", "validating", 0, 0, 0, "", ""))
	final := batchJSON("batch_s", "completed", 10, 9, 1, "file-o", "file-e")
	batchSequence(f, "batch_s",
		batchJSON("batch_s", "validating", 0, 0, 0, "", ""),
		batchJSON("batch_s", "in_progress", 10, 3, 0, "", ""),
		"!No raft leader.",
		batchJSON("batch_s", "in_progress", 10, 6, 1, "", ""),
		batchJSON("batch_s", "finalizing", 10, 8, 1, "", ""),
		final)
	serveContent(f, map[string]string{"file-o": outputContent, "file-e": errorContent})
	input, _ := writeInput(t, t.TempDir(), 500)
	dir := filepath.Join(t.TempDir(), "results")

	r := f.run("batches", "submit", input, "--wait", "--poll", "1ms", "--output-dir", dir,
		"--endpoint", "/v1/embeddings", "--metadata", "team=search").ok(t)

	reqs := f.requests()
	var trail []string
	for _, q := range reqs {
		if q.Auth != "Bearer "+testKey {
			t.Errorf("%s %s without the key", q.Method, q.Path)
		}
		trail = append(trail, q.Method+" "+q.Path)
	}
	want := []string{"POST /v1/files", "POST /v1/batches"}
	for i := range 6 {
		want = append(want, "GET /v1/batches/batch_s")
		if i == 1 {
			// Once running, its model is looked up among those served.
			want = append(want, "GET /v1/models")
		}
	}
	want = append(want, "GET /v1/files/file-o/content", "GET /v1/files/file-e/content")
	if strings.Join(trail, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(trail, "\n"), strings.Join(want, "\n"))
	}
	checkJSONBody(t, reqs[1], `{"input_file_id":"file-up","endpoint":"/v1/embeddings","completion_window":"24h","metadata":{"team":"search"}}`)

	outPath := filepath.Join(dir, "batch_s_output.jsonl")
	errPath := filepath.Join(dir, "batch_s_error.jsonl")
	for path, want := range map[string]string{outPath: outputContent, errPath: errorContent} {
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	checkLines(t, r.stdout, `BATCH        batch_s
STATUS       completed
REQUESTS     10 total, 9 completed, 1 failed
DURATION     2m3s
TOKENS       1200 in, 3400 out, 4600 total
OUTPUT FILE  `+outPath+`
ERROR FILE   `+errPath+`
`)
	// stderr is not a terminal: one progress line per status, the warning
	// about the failed poll, and no carriage returns.
	for _, want := range []string{
		"Uploaded " + input + " (500 B) as file-up\n",
		"Created batch batch_s\n",
		"[....................] 0/0 done 0 failed     0 req/s  status validating\n",
		"[######..............] 3/10 done 0 failed     0 req/s  status in_progress\n",
		"Warning: No raft leader. (HTTP 503, service_unavailable) (retrying)\n",
		"[##################..] 9/10 done 1 failed     0 req/s  status finalizing\n",
		"[####################] 10/10 done 1 failed     0 req/s  status completed\n",
		"Wrote " + outPath + " (92 B)\n",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "\r") || strings.Contains(r.stderr, "7/10") {
		t.Errorf("stderr redraws, or prints a line without a status change:\n%s", r.stderr)
	}
}

func TestBatchesSubmitFailed(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "batch"))
	f.reply("POST /v1/batches", 200, batchJSON("batch_f", "validating", 0, 0, 0, "", ""))
	failed := strings.Replace(batchJSON("batch_f", "failed", 0, 0, 0, "", ""), `"errors":null`,
		`"errors":{"object":"list","data":[{"code":"invalid_json","message":"Line is not JSON.","param":null,"line":2}]}`, 1)
	batchSequence(f, "batch_f", failed)
	input, _ := writeInput(t, t.TempDir(), 100)
	dir := t.TempDir()

	r := f.run("batches", "submit", input, "--wait", "--poll", "1ms", "--output-dir", dir)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1 for a failed batch; stderr:\n%s", r.code, r.stderr)
	}
	checkLines(t, r.stdout, `BATCH        batch_f
STATUS       failed
REQUESTS     0 total, 0 completed, 0 failed
DURATION     5s
TOKENS       0 in, 0 out, 0 total
OUTPUT FILE  -
ERROR FILE   -
ERRORS (1):
  line 2: invalid_json: Line is not JSON.
`)
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files written for a batch without output: %v", entries)
	}
	if strings.Contains(r.stderr, "Error:") {
		t.Errorf("a batch that ran to its end is reported as a vbctl error:\n%s", r.stderr)
	}
}

func TestBatchesSubmitJSON(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "batch"))
	f.reply("POST /v1/batches", 200, batchJSON("batch_j", "validating", 0, 0, 0, "", ""))
	final := batchJSON("batch_j", "completed", 1, 1, 0, "file-o", "")
	batchSequence(f, "batch_j", final)
	serveContent(f, map[string]string{"file-o": outputContent})
	input, _ := writeInput(t, t.TempDir(), 100)
	dir := t.TempDir()

	r := f.run("-o", "json", "batches", "submit", input, "--wait", "--poll", "1ms", "--output-dir", dir).ok(t)
	var got struct {
		Batch           json.RawMessage `json:"batch"`
		OutputPath      *string         `json:"output_path"`
		ErrorPath       *string         `json:"error_path"`
		DurationSeconds int64           `json:"duration_seconds"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	var compact bytes.Buffer
	_ = json.Compact(&compact, got.Batch)
	if compact.String() != final {
		t.Errorf("batch = %s, want the server's object %s", compact.String(), final)
	}
	if got.OutputPath == nil || *got.OutputPath != filepath.Join(dir, "batch_j_output.jsonl") || got.ErrorPath != nil || got.DurationSeconds != 123 {
		t.Errorf("summary = %s", r.stdout)
	}
}

func TestBatchesSubmitNoWait(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "batch"))
	created := batchJSON("batch_n", "validating", 0, 0, 0, "", "")
	f.reply("POST /v1/batches", 200, created)
	input, _ := writeInput(t, t.TempDir(), 100)

	r := f.run("-o", "json", "batches", "submit", input).ok(t)
	checkSameJSON(t, r.stdout, created)
	if len(f.requests()) != 2 {
		t.Errorf("requests: %+v, want the upload and the create only", f.requests())
	}
	if !strings.Contains(r.stderr, "Follow it with: vbctl batches watch batch_n\n") {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestBatchesWatch(t *testing.T) {
	f := newFakeServer(t)
	final := batchJSON("batch_w", "completed", 2, 2, 0, "file-o", "")
	batchSequence(f, "batch_w", batchJSON("batch_w", "in_progress", 2, 1, 0, "", ""), final)

	f.reply("GET /v1/models", 200, `{"object":"list","data":[{"id":"llama-3-8b","object":"model"}]}`)
	r := f.run("batches", "watch", "batch_w", "--poll", "1ms").ok(t)
	if n := len(f.requests()); n != 3 {
		t.Errorf("%d requests, want 2 polls, a model lookup and no download", n)
	}
	if strings.Contains(r.stderr, "no live agent") {
		t.Errorf("warned about a served model: %q", r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "ID             batch_w\nSTATUS         completed\n") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	r = f.run("batches", "watch", "batch_w", "--poll", "1ms", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, final)

	cancelled := newFakeServer(t)
	batchSequence(cancelled, "batch_c", batchJSON("batch_c", "cancelled", 2, 1, 0, "", ""))
	if r := cancelled.run("batches", "watch", "batch_c"); r.code != 1 {
		t.Errorf("watching a cancelled batch: exit %d, want 1", r.code)
	}
}

func TestBatchesWatchMissing(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/batches/{id}", 404, openAIError("No batch found with id 'batch_x'.", "invalid_request_error", "not_found"))
	r := f.run("batches", "watch", "batch_x", "--poll", "1ms")
	if r.code != 1 || !strings.HasSuffix(r.stderr, "Error: No batch found with id 'batch_x'. (HTTP 404, not_found)\n") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("%d requests: a 404 must not be retried", n)
	}
}

func TestBatchesWatchInterrupted(t *testing.T) {
	f := newFakeServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	polls := 0
	f.handle("GET /v1/batches/{id}", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		polls++
		if polls == 2 {
			cancel() // Ctrl-C while the batch runs
		}
		mu.Unlock()
		writeBody(w, 200, batchJSON("batch_i", "in_progress", 10, 1, 0, "", ""))
	})
	r := f.runCtx(ctx, "batches", "watch", "batch_i", "--poll", "1ms")
	if r.code != ExitInterrupted {
		t.Errorf("exit %d, want %d", r.code, ExitInterrupted)
	}
	if !strings.Contains(r.stderr, "Batch batch_i carries on in the cluster; follow it (and download its results) with: vbctl batches watch batch_i --output-dir DIR\n") ||
		!strings.HasSuffix(r.stderr, "Error: interrupted\n") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}

func TestProgressLine(t *testing.T) {
	b := &batchObject{Status: "in_progress", RequestCounts: requestCounts{Total: 10000, Completed: 5218, Failed: 12}}
	want := "[##########..........] 5230/10000 done 12 failed   870 req/s  status in_progress"
	if got := progressLine(b, 870.2); got != want {
		t.Errorf("progressLine = %q\nwant           %q", got, want)
	}
	// Counts past the total (a server bug) must not break the bar.
	b.RequestCounts.Completed = 20000
	if got := progressLine(b, 0); !strings.HasPrefix(got, "[####################] 20012/10000") {
		t.Errorf("progressLine = %q", got)
	}
}

func TestProgressOnTerminal(t *testing.T) {
	var out bytes.Buffer
	now := testNow
	p := &progress{e: &env{stderr: &out, tty: true, now: func() time.Time { return now }}}
	b := &batchObject{Status: "in_progress", RequestCounts: requestCounts{Total: 1000}}
	p.update(b)
	now = now.Add(2 * time.Second)
	b.RequestCounts.Completed = 200
	p.update(b)
	// Samples older than the rate window are dropped.
	now = now.Add(rateWindow)
	b.RequestCounts.Completed = 300
	p.update(b)
	p.note("Warning: x")
	want := "\r[....................] 0/1000 done 0 failed     0 req/s  status in_progress\033[K" +
		"\r[####................] 200/1000 done 0 failed   100 req/s  status in_progress\033[K" +
		"\r[######..............] 300/1000 done 0 failed    10 req/s  status in_progress\033[K" +
		"\nWarning: x\n"
	if got := out.String(); got != want {
		t.Errorf("terminal output:\n%q\nwant:\n%q", got, want)
	}
}

func TestFormatting(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 1500 * time.Millisecond: "2s", 59 * time.Second: "59s", 2 * time.Minute: "2m",
		123 * time.Second: "2m3s", time.Hour: "1h", time.Hour + 10*time.Minute: "1h10m", 3723 * time.Second: "1h2m3s",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%s) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 85520809984: "79.6 GiB"} {
		if got := fmtBytes(n); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestBatchesSubmitBadWindowUploadsNothing: a --window the API cannot take
// is refused before the file is uploaded, so nothing is left behind.
func TestBatchesSubmitBadWindowUploadsNothing(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "batch"))
	input, _ := writeInput(t, t.TempDir(), 10)
	r := f.run("batches", "submit", input, "--window", "1s")
	if r.code == 0 || !strings.Contains(r.stderr, "--window") {
		t.Fatalf("exit %d, stderr %q: want a refused --window", r.code, r.stderr)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("%d requests sent for a refused --window: %+v", n, f.requests())
	}
}

// TestBatchesWatchWarnsOfUnservedModel: a running batch whose model no
// live agent serves is pointed out, once, instead of showing no progress
// until its window ends.
func TestBatchesWatchWarnsOfUnservedModel(t *testing.T) {
	f := newFakeServer(t)
	running := batchJSON("batch_u", "in_progress", 2, 0, 0, "", "")
	batchSequence(f, "batch_u", running, running, running, batchJSON("batch_u", "cancelled", 2, 0, 0, "", ""))
	f.reply("GET /v1/models", 200, `{"object":"list","data":[{"id":"other-model","object":"model"}]}`)
	r := f.run("batches", "watch", "batch_u", "--poll", "1ms")
	if n := strings.Count(r.stderr, "no live agent serves model llama-3-8b"); n != 1 {
		t.Errorf("stderr %q: warned %d times, want once", r.stderr, n)
	}
}

// TestBatchesWatchDownloads: watch --output-dir picks up where an
// interrupted submit --wait left off: it follows the batch and downloads
// its output and error files.
func TestBatchesWatchDownloads(t *testing.T) {
	f := newFakeServer(t)
	final := batchJSON("batch_d", "completed", 10, 9, 1, "file-o", "file-e")
	batchSequence(f, "batch_d", batchJSON("batch_d", "in_progress", 10, 5, 0, "", ""), final)
	serveContent(f, map[string]string{"file-o": outputContent, "file-e": errorContent})
	dir := filepath.Join(t.TempDir(), "results")
	f.run("batches", "watch", "batch_d", "--poll", "1ms", "--output-dir", dir).ok(t)
	for path, want := range map[string]string{
		filepath.Join(dir, "batch_d_output.jsonl"): outputContent,
		filepath.Join(dir, "batch_d_error.jsonl"):  errorContent,
	} {
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
}
