package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestKeyLimitsEffective(t *testing.T) {
	def := KeyLimits{RequestsPerSecond: 5, MaxEnqueuedRequests: 100, MaxFileBytes: -1}
	cases := []struct {
		key, def, want KeyLimits
	}{
		{KeyLimits{}, KeyLimits{}, KeyLimits{}},
		{KeyLimits{}, def, KeyLimits{RequestsPerSecond: 5, MaxEnqueuedRequests: 100}},
		{KeyLimits{RequestsPerSecond: 2, MaxEnqueuedRequests: -1, MaxFileBytes: 7}, def, KeyLimits{RequestsPerSecond: 2, MaxFileBytes: 7}},
		{KeyLimits{RequestsPerSecond: -3, MaxEnqueuedRequests: 1 << 60}, KeyLimits{}, KeyLimits{MaxEnqueuedRequests: 1 << 60}},
	}
	for _, tc := range cases {
		if got := tc.key.effective(tc.def); got != tc.want {
			t.Errorf("%+v over %+v = %+v, want %+v", tc.key, tc.def, got, tc.want)
		}
	}
}

func TestRateLimitPerKey(t *testing.T) {
	e := rootEnv(t)
	slow := e.createKeyLimited("alpha", map[string]any{"requests_per_second": 1}, "batch")
	free := e.createKeyLimited("alpha", map[string]any{"requests_per_second": -1}, "batch")
	// The bucket holds twice the rate: two requests at once pass.
	for i := range 2 {
		if r := e.do(http.MethodGet, "/v1/files", slow, nil); r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	r := e.do(http.MethodGet, "/v1/batches", slow, nil)
	er := r.wantError(t, http.StatusTooManyRequests, typeRateLimit, codeRateLimit)
	if r.header.Get("Retry-After") != "1" || !strings.Contains(er["message"].(string), "limit 1 per second") {
		t.Fatalf("Retry-After %q, %v", r.header.Get("Retry-After"), er)
	}
	// Every authenticated route counts, whatever its scope says.
	e.do(http.MethodGet, "/v1/admin/keys", slow, nil).wantError(t, http.StatusTooManyRequests, typeRateLimit, codeRateLimit)
	// Other keys have their own buckets; unauthenticated requests none.
	for range 5 {
		if r := e.do(http.MethodGet, "/v1/files", free, nil); r.status != 200 {
			t.Fatalf("unlimited key: %d %s", r.status, r.body)
		}
	}
	e.do(http.MethodGet, "/v1/files", "", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	// A second refills one token.
	e.b.advance(time.Second)
	if r := e.do(http.MethodGet, "/v1/files", slow, nil); r.status != 200 {
		t.Fatalf("after a second: %d %s", r.status, r.body)
	}
	e.do(http.MethodGet, "/v1/files", slow, nil).wantError(t, http.StatusTooManyRequests, typeRateLimit, codeRateLimit)
}

func TestRateLimitDeploymentDefault(t *testing.T) {
	e := newEnv(t, Config{RootKey: testRoot, Limits: Limits{DefaultKeyLimits: KeyLimits{RequestsPerSecond: 0.25}}})
	// The root key gets the default: a burst of 1, then 4s per token.
	if r := e.do(http.MethodGet, "/v1/files", testRoot, nil); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	r := e.do(http.MethodGet, "/v1/files", testRoot, nil)
	r.wantError(t, http.StatusTooManyRequests, typeRateLimit, codeRateLimit)
	if r.header.Get("Retry-After") != "4" {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// Stored keys without their own rate get it too; a negative rate is none.
	plain, rec, err := newKey("p", "plain", []vbatchv1.Scope{vbatchv1.Scope_SCOPE_READ}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	free, freeRec, err := newKey("p", "free", []vbatchv1.Scope{vbatchv1.Scope_SCOPE_READ}, &vbatchv1.KeyLimits{RequestsPerSecond: -1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.applyKeys(t, rec, freeRec)
	if r := e.do(http.MethodGet, "/v1/files", plain, nil); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	e.do(http.MethodGet, "/v1/files", plain, nil).wantError(t, http.StatusTooManyRequests, typeRateLimit, codeRateLimit)
	for range 5 {
		if r := e.do(http.MethodGet, "/v1/files", free, nil); r.status != 200 {
			t.Fatalf("key without limit: %d %s", r.status, r.body)
		}
	}
	noLimit := newEnv(t, Config{NoAuth: true})
	for range 20 {
		if r := noLimit.do(http.MethodGet, "/v1/files", "", nil); r.status != 200 {
			t.Fatalf("zero default limits: %d %s", r.status, r.body)
		}
	}
}

func TestRateLimiterDropsIdleBuckets(t *testing.T) {
	l := newRateLimiter()
	t0 := time.Unix(1_700_000_000, 0)
	// a refills in a tenth of a second; b, at one token per 1000s, is
	// still empty a minute later.
	for _, k := range []struct {
		key string
		rps float64
	}{{"a", 10}, {"b", 0.001}} {
		if ok, _ := l.allow(k.key, k.rps, t0); !ok {
			t.Fatalf("first request of %s refused", k.key)
		}
	}
	l.allow("c", 1, t0.Add(limiterSweep))
	if _, ok := l.buckets["a"]; ok {
		t.Fatal("full idle bucket kept")
	}
	if _, ok := l.buckets["b"]; !ok {
		t.Fatal("bucket still refilling dropped: its key would get a full burst again")
	}
	if ok, wait := l.allow("b", 0.001, t0.Add(limiterSweep)); ok || wait < 900*time.Second {
		t.Fatalf("b after a minute: ok %v wait %v", ok, wait)
	}
	// A clock stepping back refills nothing.
	if ok, wait := l.allow("b", 0.001, t0); ok || wait < 900*time.Second {
		t.Fatalf("stepped-back clock: ok %v wait %v", ok, wait)
	}
}

func TestEnqueuedRequestsQuota(t *testing.T) {
	e := rootEnv(t)
	k := e.createKeyLimited("alpha", map[string]any{"max_enqueued_requests": 5}, "batch")
	in3 := e.uploadOK(k, "batch", batchLines(3))
	in6 := e.uploadOK(k, "batch", batchLines(6))
	first := e.batchOK(k, in3)
	before := e.b.snapshot()
	body := map[string]any{"input_file_id": in3, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
	er := e.postJSON("/v1/batches", k, body).wantError(t, http.StatusTooManyRequests, typeInsufficientQuota, codeInsufficientQuota)
	if msg := er["message"].(string); !strings.Contains(msg, "3 requests waiting") || !strings.Contains(msg, "limit of 5") {
		t.Fatalf("message %q", msg)
	}
	// A batch larger than the quota alone never fits.
	body["input_file_id"] = in6
	e.postJSON("/v1/batches", k, body).wantError(t, http.StatusTooManyRequests, typeInsufficientQuota, codeInsufficientQuota)
	if after := e.b.snapshot(); after != before {
		t.Fatalf("refused batch changed state: %s -> %s", before, after)
	}
	// Other projects do not count; ended batches do not either.
	other := e.createKeyLimited("beta", map[string]any{"max_enqueued_requests": 5}, "batch")
	e.batchOK(other, e.uploadOK(other, "batch", batchLines(3)))
	if r := e.do(http.MethodPost, "/v1/batches/"+first+"/cancel", k, nil); r.status != 200 {
		t.Fatalf("cancel: %d %s", r.status, r.body)
	}
	if st := batchStatus(e, first); st != vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED {
		t.Fatalf("status %v", st)
	}
	e.batchOK(k, in3)
	// A key of the same project without its own limit has none.
	free := e.createKey("alpha", "batch")
	e.batchOK(free, in6)
}

func TestEnqueuedRequestsQuotaConcurrent(t *testing.T) {
	e := rootEnv(t)
	k := e.createKeyLimited("alpha", map[string]any{"max_enqueued_requests": 10}, "batch")
	in := e.uploadOK(k, "batch", batchLines(3))
	const n = 8
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(map[string]any{"input_file_id": in, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/batches", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+k)
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	// Three batches of three fit in ten; the fourth would not.
	if count[200] != 3 || count[429] != n-3 {
		t.Fatalf("statuses %v", count)
	}
}

func TestQuotaCheckedAndCommittedUnderLock(t *testing.T) {
	e := rootEnv(t)
	k := e.createKeyLimited("alpha", map[string]any{"max_enqueued_requests": 10, "max_file_bytes": 1 << 20}, "batch")
	var checked []string
	e.b.onApply = func(cmd proto.Message) {
		switch cmd.(type) {
		case *vbatchv1.CreateBatch, *vbatchv1.CreateFile:
			// Another request of the project must not get between the
			// quota check and this commit.
			m := e.api.quotas.mutex("alpha")
			if m.TryLock() {
				m.Unlock()
				t.Errorf("%T committed without the project's quota lock", cmd)
			}
			checked = append(checked, fmt.Sprintf("%T", cmd))
		}
	}
	e.batchOK(k, e.uploadOK(k, "batch", batchLines(3)))
	if fmt.Sprint(checked) != "[*vbatchv1.CreateFile *vbatchv1.CreateBatch]" {
		t.Fatalf("commits seen: %v", checked)
	}
}

func TestEnqueuedRequestsCount(t *testing.T) {
	s := fsm.NewState()
	s.Files["f1"] = &vbatchv1.File{Id: "f1", Project: "p", Lines: 7}
	add := func(id, project string, st vbatchv1.BatchStatus, total, done, failed int64) {
		s.Batches[id] = &vbatchv1.Batch{Id: id, Project: project, InputFileId: "f1", Status: st,
			RequestCounts: &vbatchv1.RequestCounts{Total: total, Completed: done, Failed: failed}}
	}
	add("validating", "p", vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING, 0, 0, 0)    // 7 lines of its input
	add("running", "p", vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS, 100, 60, 10)  // 30 left
	add("cancelling", "p", vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING, 10, 2, 0)   // 8 left
	add("finalizing", "p", vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING, 5, 5, 0)    // none
	add("done", "p", vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED, 50, 0, 0)          // ended
	add("expired", "p", vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED, 50, 0, 0)         // ended
	add("elsewhere", "q", vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS, 1000, 0, 0) // another project
	if n := enqueuedRequests(s, "p"); n != 7+30+8 {
		t.Fatalf("enqueued %d", n)
	}
}

func TestFileBytesQuota(t *testing.T) {
	e := rootEnv(t)
	k := e.createKeyLimited("alpha", map[string]any{"max_file_bytes": 1000}, "batch")
	up := func(n int) response {
		return e.upload(k, field{name: "purpose", value: "user_data"}, field{name: "file", filename: "f", value: strings.Repeat("x", n)})
	}
	first := up(600)
	if first.status != 200 {
		t.Fatalf("%d %s", first.status, first.body)
	}
	before, blobs := e.b.snapshot(), e.b.blobCount()
	// Over the room while streaming: refused as the stream passes it.
	er := up(401).wantError(t, http.StatusTooManyRequests, typeInsufficientQuota, codeInsufficientQuota)
	if !strings.Contains(er["message"].(string), "room for 400 more bytes") {
		t.Fatalf("%v", er)
	}
	// A Content-Length that cannot fit: refused before reading.
	up(100<<10).wantError(t, http.StatusTooManyRequests, typeInsufficientQuota, codeInsufficientQuota)
	if e.b.snapshot() != before || e.b.blobCount() != blobs {
		t.Fatalf("refused uploads changed state or stored bytes: %s, %d blobs", e.b.snapshot(), e.b.blobCount())
	}
	// Exactly the room fits.
	if r := up(400); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	up(1).wantError(t, http.StatusTooManyRequests, typeInsufficientQuota, codeInsufficientQuota)
	// Deleting a file makes room.
	if r := e.do(http.MethodDelete, "/v1/files/"+first.json(t)["id"].(string), k, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := up(600); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestFileBytesQuotaCheckedAtCommit(t *testing.T) {
	e := rootEnv(t)
	k := e.createKeyLimited("alpha", map[string]any{"max_file_bytes": 1000}, "batch")
	// While this upload streams, 700 bytes of the project's files commit
	// elsewhere (a batch output, another coordinator's upload).
	e.b.onStore = func() {
		f := &vbatchv1.File{Id: "file-elsewhere", Project: "alpha", Purpose: "batch_output", Bytes: 700}
		if _, err := e.b.Apply(context.Background(), &vbatchv1.CreateFile{File: f}); err != nil {
			t.Errorf("create file: %v", err)
		}
	}
	before := ""
	e.b.f.View(func(s *fsm.State) { before = s.Files["file-elsewhere"].GetId() })
	if before != "" {
		t.Fatal("file exists before the upload")
	}
	r := e.upload(k, field{name: "purpose", value: "user_data"}, field{name: "file", filename: "f", value: strings.Repeat("x", 600)})
	er := r.wantError(t, http.StatusTooManyRequests, typeInsufficientQuota, codeInsufficientQuota)
	if !strings.Contains(er["message"].(string), "holds 700 bytes") {
		t.Fatalf("%v", er)
	}
	var files int
	e.b.f.View(func(s *fsm.State) { files = len(s.Files) })
	if files != 1 {
		t.Fatalf("%d files: the refused upload committed", files)
	}
}

func TestKeyLimitsCreateAndList(t *testing.T) {
	e := rootEnv(t)
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": "alpha", "scopes": []string{"batch"},
		"limits": map[string]any{"requests_per_second": 2.5, "max_enqueued_requests": -1, "max_file_bytes": 1 << 40}})
	if r.status != http.StatusCreated {
		t.Fatalf("%d %s", r.status, r.body)
	}
	want := map[string]any{"requests_per_second": 2.5, "max_enqueued_requests": float64(-1), "max_file_bytes": float64(1 << 40)}
	checkLimits := func(m map[string]any) {
		t.Helper()
		l, _ := m["limits"].(map[string]any)
		for k, v := range want {
			if l[k] != v {
				t.Fatalf("limits %v, want %v", l, want)
			}
		}
	}
	checkLimits(r.json(t))
	id := r.json(t)["id"].(string)
	var stored *vbatchv1.KeyLimits
	e.b.f.View(func(s *fsm.State) { stored = s.APIKeys[id].GetLimits() })
	if stored.GetRequestsPerSecond() != 2.5 || stored.GetMaxEnqueuedRequests() != -1 || stored.GetMaxFileBytes() != 1<<40 {
		t.Fatalf("stored %v", stored)
	}
	l := e.do(http.MethodGet, "/v1/admin/keys", testRoot, nil).json(t)["data"].([]any)
	checkLimits(l[0].(map[string]any))
	// Without limits every field shows 0, the deployment's default.
	r = e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": "alpha", "scopes": []string{"batch"}})
	if l := r.json(t)["limits"].(map[string]any); l["requests_per_second"] != float64(0) || l["max_file_bytes"] != float64(0) {
		t.Fatalf("default limits %v", l)
	}
	before := e.b.snapshot()
	for _, bad := range []any{
		map[string]any{"requests_per_second": 1e7},
		map[string]any{"max_file_bytes": "10GB"},
		"fast",
	} {
		r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": "alpha", "scopes": []string{"batch"}, "limits": bad})
		if r.status != 400 {
			t.Fatalf("limits %v: %d %s", bad, r.status, r.body)
		}
	}
	if e.b.snapshot() != before {
		t.Fatal("refused keys changed state")
	}
}
