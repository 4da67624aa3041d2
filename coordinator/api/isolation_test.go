package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// completeBatch runs a batch of two requests to completed as an agent and
// the leader would, one request succeeding and one failing, so that it has
// an output and an error file; it returns their ids.
func completeBatch(t *testing.T, e *env, id string) (output, errs string) {
	t.Helper()
	ctx := context.Background()
	startBatch(t, e, id, 2)
	blob := func(s string) *vbatchv1.BlobRef {
		ref, _, err := e.b.StoreUpload(ctx, strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	agent := "ag-" + id
	if _, err := e.b.Apply(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: agent, Models: []string{"m"}}}); err != nil {
		t.Fatalf("register: %v", err)
	}
	token, err := e.b.Apply(ctx, &vbatchv1.GrantLease{BatchId: id, AgentId: agent, ExpiresAt: e.b.Now().Add(time.Minute).UnixMilli()})
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	part := &vbatchv1.Part{FromLine: 0, ToLine: 2, Succeeded: 1, Failed: 1, Token: token,
		Output: blob(`{"id":"r0","custom_id":"r0"}` + "\n"), Errors: blob(`{"id":"r1","custom_id":"r1"}` + "\n")}
	output, errs = "file-out-"+id, "file-err-"+id
	for _, cmd := range []proto.Message{
		&vbatchv1.CommitPart{BatchId: id, Part: part},
		&vbatchv1.CompleteChunk{BatchId: id, Token: token},
		&vbatchv1.BeginFinalize{BatchId: id},
		&vbatchv1.FinishBatch{BatchId: id, Status: vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED, OutputFileId: output, ErrorFileId: errs},
	} {
		if _, err := e.b.Apply(ctx, cmd); err != nil {
			t.Fatalf("%T: %v", cmd, err)
		}
	}
	return output, errs
}

// TestCrossProjectIsolation gives project alpha files and batches in every
// state a client can reach them in (input, other purpose, batch output and
// error files; completed, running and validating batches), then tries
// every endpoint that takes a file or batch with project beta's key. Each
// must answer exactly as for an object that never existed, lists must not
// show them, and nothing of alpha may change.
func TestCrossProjectIsolation(t *testing.T) {
	e := rootEnv(t)
	alpha := e.createKey("alpha", "batch", "read")
	beta := e.createKey("beta", "batch", "read", "inference")
	betaRead := e.createKey("beta", "read")

	input := e.uploadOK(alpha, "batch", batchLines(2))
	userData := e.uploadOK(alpha, "user_data", "private bytes")
	completed := e.batchOK(alpha, input)
	output, errFile := completeBatch(t, e, completed)
	running := e.batchOK(alpha, input)
	startBatch(t, e, running, 2)
	validating := e.batchOK(alpha, input)
	files := []string{input, userData, output, errFile}
	batches := []string{completed, running, validating}
	alphaIDs := append(append([]string{}, files...), batches...)

	// Alpha reaches every one of them: the 404s below are not vacuous.
	for _, id := range files {
		for _, path := range []string{"/v1/files/" + id, "/v1/files/" + id + "/content"} {
			if r := e.do(http.MethodGet, path, alpha, nil); r.status != 200 {
				t.Fatalf("alpha GET %s: %d %s", path, r.status, r.body)
			}
		}
	}
	for _, id := range batches {
		if r := e.do(http.MethodGet, "/v1/batches/"+id, alpha, nil); r.status != 200 {
			t.Fatalf("alpha GET batch %s: %d %s", id, r.status, r.body)
		}
	}
	before := alphaState(e)
	if len(before.Files) != 4 || len(before.Batches) != 3 {
		t.Fatalf("alpha holds %d files and %d batches", len(before.Files), len(before.Batches))
	}

	// sameAsMissing asserts r is the answer to the request made with
	// "missing" in place of id: same status, same error object once the
	// id is swapped back.
	sameAsMissing := func(method, pathFmt, id string, key string) {
		t.Helper()
		const missing = "obj-never-existed"
		path := strings.ReplaceAll(pathFmt, "ID", id)
		got := e.do(method, path, key, nil)
		want := e.do(method, strings.ReplaceAll(pathFmt, "ID", missing), key, nil)
		if got.status != http.StatusNotFound || got.status != want.status {
			t.Fatalf("beta %s %s: %d %s (a missing object: %d)", method, path, got.status, got.body, want.status)
		}
		if g, w := string(got.body), strings.ReplaceAll(string(want.body), missing, id); g != w {
			t.Fatalf("beta %s %s answers differently from a missing object:\n%s\n%s", method, path, g, w)
		}
	}
	for _, key := range []string{beta, betaRead} {
		for _, id := range files {
			for _, q := range []string{"", "?consistent=true"} {
				sameAsMissing(http.MethodGet, "/v1/files/ID"+q, id, key)
				sameAsMissing(http.MethodGet, "/v1/files/ID/content"+q, id, key)
			}
		}
		for _, id := range batches {
			for _, q := range []string{"", "?consistent=true"} {
				sameAsMissing(http.MethodGet, "/v1/batches/ID"+q, id, key)
			}
		}
	}
	for _, id := range files {
		sameAsMissing(http.MethodDelete, "/v1/files/ID", id, beta)
	}
	for _, id := range batches {
		sameAsMissing(http.MethodPost, "/v1/batches/ID/cancel", id, beta)
	}

	// Another project's file as batch input reads as a missing one.
	for _, id := range files {
		body := map[string]any{"input_file_id": id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
		got := e.postJSON("/v1/batches", beta, body)
		body["input_file_id"] = "file-never"
		want := e.postJSON("/v1/batches", beta, body)
		if got.status != http.StatusNotFound || got.status != want.status || string(got.body) != strings.ReplaceAll(string(want.body), "file-never", id) {
			t.Fatalf("batch over alpha's %s: %d %s, missing file: %d %s", id, got.status, got.body, want.status, want.body)
		}
	}

	// Lists show none of alpha's objects, whatever the filter, order or
	// page; a cursor naming one of them is as unknown as a made-up one.
	beta1 := e.uploadOK(beta, "user_data", "beta's own")
	for _, path := range []string{
		"/v1/files", "/v1/files?order=asc", "/v1/files?purpose=batch", "/v1/files?purpose=batch_output",
		"/v1/files?purpose=user_data&limit=1", "/v1/files?consistent=true", "/v1/batches", "/v1/batches?limit=100",
		"/v1/batches?consistent=true",
	} {
		r := e.do(http.MethodGet, path, beta, nil)
		if r.status != 200 {
			t.Fatalf("beta GET %s: %d %s", path, r.status, r.body)
		}
		for _, id := range alphaIDs {
			if strings.Contains(string(r.body), id) {
				t.Fatalf("beta GET %s shows alpha's %s: %s", path, id, r.body)
			}
		}
	}
	if r := e.do(http.MethodGet, "/v1/files?purpose=user_data", beta, nil); !strings.Contains(string(r.body), beta1) {
		t.Fatalf("beta's own file missing from its list: %s", r.body)
	}
	for _, id := range alphaIDs {
		for _, list := range []string{"/v1/files", "/v1/batches"} {
			got := e.do(http.MethodGet, list+"?after="+id, beta, nil)
			want := e.do(http.MethodGet, list+"?after=obj-never", beta, nil)
			if got.status != 400 || string(got.body) != strings.ReplaceAll(string(want.body), "obj-never", id) {
				t.Fatalf("beta %s?after=%s: %d %s", list, id, got.status, got.body)
			}
		}
	}
	// The root key belongs to project default: it is no window into alpha.
	for _, id := range files {
		sameAsMissing(http.MethodGet, "/v1/files/ID", id, testRoot)
	}
	for _, id := range batches {
		sameAsMissing(http.MethodGet, "/v1/batches/ID", id, testRoot)
	}

	if after := alphaState(e); !after.Equal(before) {
		t.Fatal("alpha's objects changed")
	}
}

// alphaState is a copy of project alpha's files and batches.
func alphaState(e *env) *fsm.State {
	out := fsm.NewState()
	e.b.f.View(func(s *fsm.State) {
		for id, f := range s.Files {
			if f.Project == "alpha" {
				out.Files[id] = proto.Clone(f).(*vbatchv1.File)
			}
		}
		for id, b := range s.Batches {
			if b.Project == "alpha" {
				out.Batches[id] = proto.Clone(b).(*vbatchv1.Batch)
			}
		}
	})
	return out
}
