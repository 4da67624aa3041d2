package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// finishCancel ends a cancelling batch the way the leader loop would.
func finishCancel(t *testing.T, e *env, id string) {
	t.Helper()
	if batchStatus(e, id) != vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING {
		return
	}
	_, err := e.b.Apply(context.Background(), &vbatchv1.FinishBatch{BatchId: id, Status: vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED,
		OutputFileId: "file-out" + id, ErrorFileId: "file-err" + id})
	if err != nil {
		t.Fatalf("finish %s: %v", id, err)
	}
}

func batchStatus(e *env, id string) vbatchv1.BatchStatus {
	var st vbatchv1.BatchStatus
	e.b.f.View(func(s *fsm.State) {
		if b, ok := s.Batches[id]; ok {
			st = b.Status
		}
	})
	return st
}

// startBatch moves a validating batch of n requests to in_progress, as
// the leader does once the input validated.
func startBatch(t *testing.T, e *env, id string, n int64) {
	t.Helper()
	_, err := e.b.Apply(context.Background(), &vbatchv1.StartBatch{BatchId: id, Model: "m", Total: n,
		Chunks: []*vbatchv1.Chunk{{Index: 0, StartLine: 0, EndLine: n, StartOffset: 0, EndOffset: 100 * n}}})
	if err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
}

func TestCreateBatch(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(2))
	r := e.postJSON("/v1/batches", testRoot, map[string]any{
		"input_file_id": in, "endpoint": "/v1/embeddings", "completion_window": "90m",
		"metadata": map[string]string{"team": "search"},
	})
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	m := r.json(t)
	id := m["id"].(string)
	if !strings.HasPrefix(id, "batch_") || m["object"] != "batch" || m["status"] != "validating" || m["input_file_id"] != in ||
		m["endpoint"] != "/v1/embeddings" || m["completion_window"] != "90m" || m["created_at"] != float64(1_700_000_000) ||
		m["expires_at"] != float64(1_700_000_000+90*60) || m["metadata"].(map[string]any)["team"] != "search" ||
		m["errors"] != nil || m["output_file_id"] != nil || m["completed_at"] != nil {
		t.Fatalf("batch %v", m)
	}
	rc := m["request_counts"].(map[string]any)
	if rc["total"] != float64(0) || rc["completed"] != float64(0) || rc["failed"] != float64(0) {
		t.Fatalf("request_counts %v", rc)
	}
	g := e.do(http.MethodGet, "/v1/batches/"+id, testRoot, nil)
	if g.status != 200 || g.json(t)["id"] != id {
		t.Fatalf("%d %s", g.status, g.body)
	}
	e.do(http.MethodGet, "/v1/batches/batch_nope", testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
	er := e.do(http.MethodGet, "/v1/batches/batch_nope", testRoot, nil).json(t)["error"].(map[string]any)
	if er["message"] != "No batch found with id 'batch_nope'." {
		t.Fatalf("message %v", er["message"])
	}
}

func TestCreateBatchErrors(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(1))
	other := e.uploadOK(testRoot, "user_data", "x")
	ok := func(mod func(m map[string]any)) map[string]any {
		m := map[string]any{"input_file_id": in, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
		mod(m)
		return m
	}
	many := map[string]string{}
	for i := range 17 {
		many[fmt.Sprint("k", i)] = "v"
	}
	cases := []struct {
		name  string
		body  any
		code  string
		param string
	}{
		{"no input", ok(func(m map[string]any) { delete(m, "input_file_id") }), codeMissingParam, "input_file_id"},
		{"no endpoint", ok(func(m map[string]any) { delete(m, "endpoint") }), codeMissingParam, "endpoint"},
		{"no window", ok(func(m map[string]any) { delete(m, "completion_window") }), codeMissingParam, "completion_window"},
		{"bad endpoint", ok(func(m map[string]any) { m["endpoint"] = "/v1/images/generations" }), codeInvalidValue, "endpoint"},
		{"window 0h", ok(func(m map[string]any) { m["completion_window"] = "0h" }), codeInvalidValue, "completion_window"},
		{"window days", ok(func(m map[string]any) { m["completion_window"] = "1d" }), codeInvalidValue, "completion_window"},
		{"window too long", ok(func(m map[string]any) { m["completion_window"] = "169h" }), codeInvalidValue, "completion_window"},
		{"window huge", ok(func(m map[string]any) { m["completion_window"] = "99999999999m" }), codeInvalidValue, "completion_window"},
		{"too much metadata", ok(func(m map[string]any) { m["metadata"] = many }), codeInvalidValue, "metadata"},
		{"long metadata key", ok(func(m map[string]any) { m["metadata"] = map[string]string{strings.Repeat("k", 65): "v"} }), codeInvalidValue, "metadata"},
		{"long metadata value", ok(func(m map[string]any) { m["metadata"] = map[string]string{"k": strings.Repeat("v", 513)} }), codeInvalidValue, "metadata"},
		{"metadata not strings", ok(func(m map[string]any) { m["metadata"] = map[string]int{"k": 1} }), codeInvalidJSON, "metadata"},
		{"null metadata value", ok(func(m map[string]any) { m["metadata"] = map[string]any{"k": nil} }), codeInvalidValue, "metadata"},
		{"bad output expiry", ok(func(m map[string]any) {
			m["output_expires_after"] = map[string]any{"anchor": "created_at", "seconds": 5}
		}), codeInvalidValue, "output_expires_after.seconds"},
		{"wrong purpose", ok(func(m map[string]any) { m["input_file_id"] = other }), codeInvalidFile, "input_file_id"},
		{"not an object", []int{1}, codeInvalidJSON, ""},
		{"huge file id", ok(func(m map[string]any) { m["input_file_id"] = strings.Repeat("f", 129) }), codeInvalidValue, "input_file_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.b.snapshot()
			er := e.postJSON("/v1/batches", testRoot, tc.body).wantError(t, 400, typeInvalidRequest, tc.code)
			if er["param"] != nilIfEmpty(tc.param) {
				t.Fatalf("param %v, want %q", er["param"], tc.param)
			}
			if e.b.snapshot() != before {
				t.Fatal("refused request changed state")
			}
		})
	}
	before := e.b.snapshot()
	er := e.postJSON("/v1/batches", testRoot, ok(func(m map[string]any) { m["input_file_id"] = "file-nope" })).wantError(t, 404, typeInvalidRequest, codeNotFound)
	if er["param"] != "input_file_id" || e.b.snapshot() != before {
		t.Fatalf("missing input file: param %v, or state changed", er["param"])
	}
	r := e.do(http.MethodPost, "/v1/batches", testRoot, strings.NewReader("{"), "Content-Type", "application/json")
	r.wantError(t, 400, typeInvalidRequest, codeInvalidJSON)
	r = e.do(http.MethodPost, "/v1/batches", testRoot, strings.NewReader("{} {}"), "Content-Type", "application/json")
	r.wantError(t, 400, typeInvalidRequest, codeInvalidJSON)
	// Accepted windows.
	for _, w := range []string{"1m", "24h", "168h", "10080m"} {
		r := e.postJSON("/v1/batches", testRoot, ok(func(m map[string]any) { m["completion_window"] = w }))
		if r.status != 200 {
			t.Fatalf("window %s: %d %s", w, r.status, r.body)
		}
	}
}

func TestCancelBatch(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(1))
	id := e.batchOK(testRoot, in)
	r := e.do(http.MethodPost, "/v1/batches/"+id+"/cancel", testRoot, nil)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if st := r.json(t)["status"]; st != "cancelling" && st != "cancelled" {
		t.Fatalf("status %v", st)
	}
	if r.json(t)["cancelling_at"] == nil {
		t.Fatalf("no cancelling_at: %s", r.body)
	}
	// Cancelling again answers the batch as it is and changes nothing.
	before := e.b.snapshot()
	r2 := e.do(http.MethodPost, "/v1/batches/"+id+"/cancel", testRoot, nil)
	if r2.status != 200 || r2.json(t)["status"] != r.json(t)["status"] || e.b.snapshot() != before {
		t.Fatalf("second cancel %d %s", r2.status, r2.body)
	}
	e.do(http.MethodPost, "/v1/batches/batch_nope/cancel", testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)

	// A running batch goes to cancelling; the leader ends it later.
	id3 := e.batchOK(testRoot, in)
	startBatch(t, e, id3, 1)
	r = e.do(http.MethodPost, "/v1/batches/"+id3+"/cancel", testRoot, nil)
	if m := r.json(t); r.status != 200 || m["status"] != "cancelling" || m["model"] != "m" || m["in_progress_at"] == nil ||
		m["request_counts"].(map[string]any)["total"] != float64(1) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// A finalizing batch is past cancelling.
	id4 := e.batchOK(testRoot, in)
	if _, err := e.b.Apply(context.Background(), &vbatchv1.StartBatch{BatchId: id4, Model: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Apply(context.Background(), &vbatchv1.BeginFinalize{BatchId: id4}); err != nil {
		t.Fatal(err)
	}
	er := e.do(http.MethodPost, "/v1/batches/"+id4+"/cancel", testRoot, nil).wantError(t, http.StatusConflict, typeInvalidRequest, codeConflict)
	if er["message"] != "Cannot cancel a batch with status 'finalizing'." {
		t.Fatalf("%v", er)
	}

	// A batch that ended otherwise cannot be cancelled.
	id2 := e.batchOK(testRoot, in)
	if _, err := e.b.Apply(context.Background(), &vbatchv1.FailBatch{BatchId: id2, Errors: []*vbatchv1.BatchError{{Code: "empty_file", Message: "empty"}}}); err != nil {
		t.Fatal(err)
	}
	before = e.b.snapshot()
	er = e.do(http.MethodPost, "/v1/batches/"+id2+"/cancel", testRoot, nil).wantError(t, http.StatusConflict, typeInvalidRequest, codeConflict)
	if er["message"] != "Cannot cancel a batch with status 'failed'." || e.b.snapshot() != before {
		t.Fatalf("%v", er)
	}
	g := e.do(http.MethodGet, "/v1/batches/"+id2, testRoot, nil).json(t)
	errs := g["errors"].(map[string]any)
	d := errs["data"].([]any)[0].(map[string]any)
	if errs["object"] != "list" || d["code"] != "empty_file" || d["param"] != nil || d["line"] != nil || g["failed_at"] == nil {
		t.Fatalf("failed batch %v", g)
	}
}

func TestListBatchesPagination(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(1))
	var ids []string
	for range 7 {
		ids = append(ids, e.batchOK(testRoot, in))
		e.b.advance(time.Second)
	}
	var got []string
	cursor := ""
	pages := 0
	for {
		q := "/v1/batches?limit=3"
		if cursor != "" {
			q += "&after=" + cursor
		}
		r := e.do(http.MethodGet, q, testRoot, nil)
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		m := r.json(t)
		data := m["data"].([]any)
		for _, d := range data {
			got = append(got, d.(map[string]any)["id"].(string))
		}
		pages++
		if m["first_id"] != data[0].(map[string]any)["id"] || m["last_id"] != data[len(data)-1].(map[string]any)["id"] {
			t.Fatalf("first/last ids %v", m)
		}
		if !m["has_more"].(bool) {
			break
		}
		cursor = m["last_id"].(string)
	}
	want := make([]string, len(ids))
	for i, id := range ids {
		want[len(ids)-1-i] = id
	}
	if pages != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%d pages %v, want newest first %v", pages, got, want)
	}
	r := e.do(http.MethodGet, "/v1/batches", testRoot, nil).json(t)
	if len(r["data"].([]any)) != 7 || r["has_more"] != false {
		t.Fatalf("default page %v", r)
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?after=batch_nope"} {
		e.do(http.MethodGet, "/v1/batches"+q, testRoot, nil).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	}
}

func TestConsistentRead(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(1))
	id := e.batchOK(testRoot, in)
	e.do(http.MethodGet, "/v1/batches/"+id, testRoot, nil)
	if e.b.consistentCalls != 0 {
		t.Fatal("a plain read asked the leader")
	}
	e.do(http.MethodGet, "/v1/batches/"+id+"?consistent=true", testRoot, nil)
	e.do(http.MethodGet, "/v1/files", testRoot, nil, "X-Vbatch-Consistent", "true")
	if e.b.consistentCalls != 2 {
		t.Fatalf("%d consistent reads", e.b.consistentCalls)
	}
	e.b.readErr = fmt.Errorf("verify leader: %w", ErrUnavailable)
	e.do(http.MethodGet, "/v1/files/"+in+"?consistent=true", testRoot, nil).wantError(t, 503, typeServer, codeUnavailable)
	// A miss cannot be told from lag without the leader.
	e.do(http.MethodGet, "/v1/batches/batch_nope", testRoot, nil).wantError(t, 503, typeServer, codeUnavailable)
}

func TestMissRetriesConsistently(t *testing.T) {
	// An object created through another coordinator that this one has not
	// applied yet is found after the consistent read a miss triggers.
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(1))
	late := &vbatchv1.Batch{Id: "batch_late", Project: "default", InputFileId: in, Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING, CreatedAt: 1, ExpiresAt: 2,
		RequestCounts: &vbatchv1.RequestCounts{}}
	e.b.onConsistent = func() {
		if _, err := e.b.Apply(context.Background(), &vbatchv1.CreateBatch{Batch: late}); err != nil {
			t.Errorf("apply: %v", err)
		}
	}
	r := e.do(http.MethodGet, "/v1/batches/batch_late", testRoot, nil)
	if r.status != 200 || e.b.consistentCalls != 1 {
		t.Fatalf("%d %s after %d consistent reads", r.status, r.body, e.b.consistentCalls)
	}
	e.do(http.MethodGet, "/v1/batches/batch_nope", testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
	if e.b.consistentCalls != 2 {
		t.Fatalf("%d consistent reads", e.b.consistentCalls)
	}
}

func TestWriteWithoutLeader(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(1))
	e.b.applyErr = fmt.Errorf("forward: %w", ErrUnavailable)
	before := e.b.snapshot()
	e.postJSON("/v1/batches", testRoot, map[string]any{"input_file_id": in, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).
		wantError(t, 503, typeServer, codeUnavailable)
	if e.b.snapshot() != before {
		t.Fatal("state changed")
	}
}

// TestOutputExpiresAfterIsKept: output_expires_after goes into the batch
// (its result files expire by it), and while an older coordinator that
// would ignore it is in the cluster the batch is refused with 503 rather
// than created without it.
func TestOutputExpiresAfterIsKept(t *testing.T) {
	e := rootEnv(t)
	in := e.uploadOK(testRoot, "batch", batchLines(2))
	body := map[string]any{
		"input_file_id": in, "endpoint": "/v1/embeddings", "completion_window": "24h",
		"output_expires_after": map[string]any{"anchor": "created_at", "seconds": 7200},
	}
	r := e.postJSON("/v1/batches", testRoot, body)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	id := r.json(t)["id"].(string)
	e.b.f.View(func(s *fsm.State) {
		if got := s.Batches[id].GetOutputExpiresAfterSeconds(); got != 7200 {
			t.Errorf("batch keeps output_expires_after %d s, want 7200", got)
		}
	})
	e.b.mu.Lock()
	e.b.level = fsm.LevelOutputExpiry - 1
	e.b.mu.Unlock()
	var before int
	e.b.f.View(func(s *fsm.State) { before = len(s.Batches) })
	r = e.postJSON("/v1/batches", testRoot, body)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "output_expires_after") {
		t.Fatalf("below the level: %d %s, want 503 naming output_expires_after", r.status, r.body)
	}
	e.b.f.View(func(s *fsm.State) {
		if len(s.Batches) != before {
			t.Errorf("a refused batch changed the state: %d batches, was %d", len(s.Batches), before)
		}
	})
	delete(body, "output_expires_after")
	if r = e.postJSON("/v1/batches", testRoot, body); r.status != 200 {
		t.Fatalf("without the field, below the level: %d %s", r.status, r.body)
	}
}

// TestCreateTimesFromLeader: through a coordinator whose clock runs ten
// minutes behind the leader's, a new file's and batch's created_at are the
// leader's time, and the file's expires_after and the batch's window count
// from it (FSM level 10). Below that level both still come from the
// receiving coordinator's clock.
func TestCreateTimesFromLeader(t *testing.T) {
	e := rootEnv(t)
	const ahead = 10 * time.Minute
	e.b.mu.Lock()
	e.b.leaderAhead = ahead
	e.b.mu.Unlock()
	check := func(want int64) {
		t.Helper()
		file := uploadExpiring(t, e, 3600).json(t)
		if file["created_at"] != float64(want) || file["expires_at"] != float64(want+3600) {
			t.Errorf("file created_at %v, expires_at %v; want %d and %d", file["created_at"], file["expires_at"], want, want+3600)
		}
		r := e.postJSON("/v1/batches", testRoot, map[string]any{"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
		if r.status != http.StatusOK {
			t.Fatalf("%d %s", r.status, r.body)
		}
		b := r.json(t)
		if b["created_at"] != float64(want) || b["expires_at"] != float64(want+24*3600) {
			t.Errorf("batch created_at %v, expires_at %v; want %d and %d", b["created_at"], b["expires_at"], want, want+24*3600)
		}
		e.b.f.View(func(s *fsm.State) {
			if f := s.Files[file["id"].(string)]; f.CreatedAt != want || f.ExpiresAt != want+3600 {
				t.Errorf("stored file created_at %d, expires_at %d", f.CreatedAt, f.ExpiresAt)
			}
			if sb := s.Batches[b["id"].(string)]; sb.CreatedAt != want || sb.ExpiresAt != want+24*3600 {
				t.Errorf("stored batch created_at %d, expires_at %d", sb.CreatedAt, sb.ExpiresAt)
			}
		})
	}
	check(e.b.Now().Add(ahead).Unix())
	e.b.mu.Lock()
	e.b.level = fsm.LevelCreateTimes - 1
	e.b.mu.Unlock()
	check(e.b.Now().Unix())
}
