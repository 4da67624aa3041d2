package cli

import (
	"fmt"
	"testing"
)

// batchJSON is a Batch object as the coordinator writes it, with the given
// status, counts and output ids ("" for null).
func batchJSON(id, status string, total, completed, failed int, outputID, errorID string) string {
	null := func(s string) string {
		if s == "" {
			return "null"
		}
		return fmt.Sprintf("%q", s)
	}
	var completedAt, failedAt, usage = "null", "null", `{"input_tokens":0,"input_tokens_details":{"cached_tokens":0},"output_tokens":0,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":0}`
	switch status {
	case "completed":
		completedAt = "1795780923"
		usage = `{"input_tokens":1200,"input_tokens_details":{"cached_tokens":0},"output_tokens":3400,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":4600}`
	case "failed":
		failedAt = "1795780805"
	}
	return fmt.Sprintf(`{"id":%q,"object":"batch","endpoint":"/v1/chat/completions","model":"llama-3-8b","errors":null,`+
		`"input_file_id":"file-in","completion_window":"24h","status":%q,"output_file_id":%s,"error_file_id":%s,`+
		`"created_at":1795780800,"in_progress_at":null,"expires_at":1795867200,"finalizing_at":null,"completed_at":%s,`+
		`"failed_at":%s,"expired_at":null,"cancelling_at":null,"cancelled_at":null,`+
		`"request_counts":{"total":%d,"completed":%d,"failed":%d},"usage":%s,"metadata":{"team":"search"}}`,
		id, status, null(outputID), null(errorID), completedAt, failedAt, total, completed, failed, usage)
}

func TestBatchesCreate(t *testing.T) {
	f := newFakeServer(t)
	body := batchJSON("batch_1", "validating", 0, 0, 0, "", "")
	f.reply("POST /v1/batches", 200, body)

	r := f.run("batches", "create", "--input-file", "file-in", "--metadata", "team=search", "--metadata", "run=a=b").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/batches", "")
	checkJSONBody(t, req, `{"input_file_id":"file-in","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"team":"search","run":"a=b"}}`)
	checkLines(t, r.stdout, `ID             batch_1
STATUS         validating
ENDPOINT       /v1/chat/completions
MODEL          llama-3-8b
WINDOW         24h
INPUT FILE     file-in
OUTPUT FILE    -
ERROR FILE     -
REQUESTS       0 total, 0 completed, 0 failed
CREATED        2026-11-27 12:00:00Z
EXPIRES        2026-11-28 12:00:00Z
METADATA team  search
`)

	r = f.run("-o", "json", "batches", "create", "--input-file", "file-2", "--endpoint", "/v1/embeddings", "--window", "48h").ok(t)
	checkJSONBody(t, f.requests()[1], `{"input_file_id":"file-2","endpoint":"/v1/embeddings","completion_window":"48h"}`)
	checkSameJSON(t, r.stdout, body)
}

func TestBatchesList(t *testing.T) {
	f := newFakeServer(t)
	body := `{"object":"list","data":[` + batchJSON("batch_2", "in_progress", 10, 4, 1, "", "") + `,` +
		batchJSON("batch_1", "completed", 3, 3, 0, "file-o", "") + `],"first_id":"batch_2","last_id":"batch_1","has_more":false}`
	f.reply("GET /v1/batches", 200, body)

	r := f.run("batches", "list", "--limit", "2", "--after", "batch_3").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/batches", "after=batch_3&limit=2")
	checkLines(t, r.stdout, `ID       STATUS       MODEL       DONE/FAILED/TOTAL  CREATED
batch_2  in_progress  llama-3-8b  4/1/10             2026-11-27 12:00:00Z
batch_1  completed    llama-3-8b  3/0/3              2026-11-27 12:00:00Z
`)
	if r.stderr != "" {
		t.Errorf("stderr = %q", r.stderr)
	}
	r = f.run("batches", "list", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, body)
}

func TestBatchesGetShowsErrors(t *testing.T) {
	f := newFakeServer(t)
	body := `{"id":"batch_f","object":"batch","endpoint":"/v1/chat/completions","model":null,` +
		`"errors":{"object":"list","data":[{"code":"invalid_json","message":"Line is not JSON.","param":null,"line":3},` +
		`{"code":"mismatched_model","message":"All requests must use the same model.","param":"body.model","line":7}]},` +
		`"input_file_id":"file-in","completion_window":"24h","status":"failed","output_file_id":null,"error_file_id":null,` +
		`"created_at":1795780800,"in_progress_at":null,"expires_at":null,"finalizing_at":null,"completed_at":null,` +
		`"failed_at":1795780801,"expired_at":null,"cancelling_at":null,"cancelled_at":null,` +
		`"request_counts":{"total":0,"completed":0,"failed":0},"usage":{"input_tokens":0,"output_tokens":0,"total_tokens":0},"metadata":null}`
	f.reply("GET /v1/batches/{id}", 200, body)

	r := f.run("batches", "get", "batch_f").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/batches/batch_f", "")
	checkLines(t, r.stdout, `ID           batch_f
STATUS       failed
ENDPOINT     /v1/chat/completions
MODEL        -
WINDOW       24h
INPUT FILE   file-in
OUTPUT FILE  -
ERROR FILE   -
REQUESTS     0 total, 0 completed, 0 failed
CREATED      2026-11-27 12:00:00Z
FAILED       2026-11-27 12:00:01Z
ERRORS (2):
  line 3: invalid_json: Line is not JSON.
  line 7: body.model: mismatched_model: All requests must use the same model.
`)
	r = f.run("batches", "get", "batch_f", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, body)
}

func TestBatchesCancel(t *testing.T) {
	f := newFakeServer(t)
	body := batchJSON("batch_1", "cancelling", 10, 2, 0, "", "")
	f.reply("POST /v1/batches/{id}/cancel", 200, body)
	r := f.run("-o", "json", "batches", "cancel", "batch_1").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/batches/batch_1/cancel", "")
	if len(req.Body) != 0 {
		t.Errorf("cancel sent a body: %q", req.Body)
	}
	checkSameJSON(t, r.stdout, body)

	f2 := newFakeServer(t)
	f2.reply("POST /v1/batches/{id}/cancel", 409, openAIError("Cannot cancel a batch with status 'completed'.", "invalid_request_error", "conflict"))
	r = f2.run("batches", "cancel", "batch_1")
	if r.code != 1 || r.stderr != "Error: Cannot cancel a batch with status 'completed'. (HTTP 409, conflict)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestBatchIDIsEscaped(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/batches/{id}", 200, batchJSON("x", "completed", 0, 0, 0, "", ""))
	f.run("batches", "get", "a/b?c").ok(t)
	if got := f.only(); got.Path != "/v1/batches/a%2Fb%3Fc" || got.Query != "" {
		t.Errorf("path %q, query %q; want the id escaped as one segment", got.Path, got.Query)
	}
}
