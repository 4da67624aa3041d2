package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// auditSink collects the JSON audit records.
type auditSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *auditSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// records returns every record written so far and forgets them.
func (s *auditSink) records(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(&s.buf)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	s.buf.Reset()
	return out
}

// one asserts exactly one record was written and returns it.
func (s *auditSink) one(t *testing.T) map[string]any {
	t.Helper()
	recs := s.records(t)
	if len(recs) != 1 {
		t.Fatalf("%d audit records, want 1: %v", len(recs), recs)
	}
	return recs[0]
}

func auditEnv(t *testing.T) (*env, *auditSink) {
	t.Helper()
	sink := &auditSink{}
	b := &opsBackend{fakeBackend: newFakeBackend()}
	a := New(b, Config{RootKey: testRoot, Audit: slog.New(slog.NewJSONHandler(sink, nil))}, nil)
	return &env{t: t, b: b.fakeBackend, api: a, srv: newServer(t, a)}, sink
}

// wantAudit checks the fields of a record; want lists field, value pairs.
func wantAudit(t *testing.T, rec map[string]any, want ...any) {
	t.Helper()
	if rec["msg"] != "audit" || rec["level"] != "INFO" {
		t.Fatalf("record %v", rec)
	}
	for _, k := range []string{"action", "actor", "project", "target", "outcome", "remote_addr", "request_id"} {
		if _, ok := rec[k]; !ok {
			t.Fatalf("record lacks %s: %v", k, rec)
		}
	}
	if ra, _ := rec["remote_addr"].(string); !strings.HasPrefix(ra, "127.0.0.1:") {
		t.Fatalf("remote_addr %v", rec["remote_addr"])
	}
	for i := 0; i+1 < len(want); i += 2 {
		if got := rec[want[i].(string)]; got != want[i+1] {
			t.Fatalf("%s = %v, want %v: %v", want[i], got, want[i+1], rec)
		}
	}
	if rec["outcome"] == auditOutcomeOK && rec["error"] != nil {
		t.Fatalf("ok record with an error: %v", rec)
	}
	if rec["outcome"] != auditOutcomeOK {
		if msg, _ := rec["error"].(string); msg == "" || rec["status"] == nil {
			t.Fatalf("%s record without error and status: %v", rec["outcome"], rec)
		}
	}
}

func TestAuditKeysFilesBatches(t *testing.T) {
	e, sink := auditEnv(t)
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": "alpha", "name": "ci", "scopes": []string{"batch"}})
	key, keyID := r.json(t)["key"].(string), r.json(t)["id"].(string)
	wantAudit(t, sink.one(t), "action", "key.create", "actor", "root", "project", "alpha", "target", keyID, "outcome", "ok")

	// Reads and uploads are not administrative actions.
	in := e.uploadOK(key, "batch", batchLines(2))
	e.do(http.MethodGet, "/v1/files", key, nil)
	if recs := sink.records(t); len(recs) != 0 {
		t.Fatalf("non-administrative requests audited: %v", recs)
	}

	batch := e.batchOK(key, in)
	rec := sink.one(t)
	wantAudit(t, rec, "action", "batch.create", "project", "alpha", "target", batch, "outcome", "ok")
	if rec["actor"] != keyID {
		t.Fatalf("actor %v, want %s", rec["actor"], keyID)
	}
	r = e.do(http.MethodPost, "/v1/batches/"+batch+"/cancel", key, nil, requestIDHeader, "req-cancel-1")
	wantAudit(t, sink.one(t), "action", "batch.cancel", "target", batch, "outcome", "ok", "request_id", "req-cancel-1")
	e.do(http.MethodDelete, "/v1/files/"+in, key, nil)
	wantAudit(t, sink.one(t), "action", "file.delete", "project", "alpha", "target", in, "outcome", "ok")

	// Failures and refusals are recorded too.
	e.do(http.MethodDelete, "/v1/files/file-nope", key, nil)
	wantAudit(t, sink.one(t), "action", "file.delete", "target", "file-nope", "outcome", "error", "status", float64(404))
	e.postJSON("/v1/admin/keys", key, map[string]any{"project": "alpha", "scopes": []string{"admin"}})
	wantAudit(t, sink.one(t), "action", "key.create", "actor", keyID, "project", "alpha", "outcome", "denied", "status", float64(403))
	e.do(http.MethodDelete, "/v1/admin/keys/"+keyID, key, nil)
	wantAudit(t, sink.one(t), "action", "key.revoke", "target", keyID, "outcome", "denied")
	e.postJSON("/v1/batches", key, map[string]any{"input_file_id": "file-gone", "endpoint": "/v1/chat/completions", "completion_window": "24h"})
	wantAudit(t, sink.one(t), "action", "batch.create", "outcome", "error", "status", float64(404))

	// The root key revokes alpha's key: the record names alpha.
	e.do(http.MethodDelete, "/v1/admin/keys/"+keyID, testRoot, nil)
	wantAudit(t, sink.one(t), "action", "key.revoke", "actor", "root", "project", "alpha", "target", keyID, "outcome", "ok")
	// Unauthenticated attempts carry no actor: they are not audited (the
	// request log has them).
	e.do(http.MethodDelete, "/v1/admin/keys/"+keyID, key, nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	if recs := sink.records(t); len(recs) != 0 {
		t.Fatalf("unauthenticated request audited: %v", recs)
	}
}

func TestAuditClusterAndAgents(t *testing.T) {
	e, sink := auditEnv(t)
	cases := []struct {
		method, path string
		body         any
		want         []any
	}{
		{http.MethodPost, "/v1/admin/cluster/transfer-leadership", map[string]any{"to": "c3"},
			[]any{"action", "cluster.transfer_leadership", "target", "c3", "outcome", "ok"}},
		{http.MethodPost, "/v1/admin/cluster/remove-peer", map[string]any{"id": "c1"},
			[]any{"action", "cluster.remove_peer", "target", "c1", "outcome", "error"}},
		{http.MethodPost, "/v1/admin/cluster/remove-peer", map[string]any{"id": "c3"},
			[]any{"action", "cluster.remove_peer", "target", "c3", "outcome", "ok"}},
		{http.MethodPost, "/v1/admin/cluster/join", map[string]any{"addresses": []string{"10.0.0.4:8003", "10.0.0.5:8003"}},
			[]any{"action", "cluster.join", "target", "10.0.0.4:8003,10.0.0.5:8003", "outcome", "ok"}},
		{http.MethodGet, "/v1/admin/cluster/snapshot", nil, []any{"action", "cluster.snapshot_save", "outcome", "ok"}},
		{http.MethodPost, "/v1/admin/cluster/snapshot/restore", "junk", []any{"action", "cluster.snapshot_restore", "outcome", "error"}},
		{http.MethodPost, "/v1/admin/agents/a1/drain", nil, []any{"action", "agent.drain", "target", "a1", "outcome", "ok"}},
		{http.MethodPost, "/v1/admin/agents/a9/drain", nil, []any{"action", "agent.drain", "target", "a9", "outcome", "error"}},
		{http.MethodPost, "/v1/admin/agents/a1/undrain", nil, []any{"action", "agent.undrain", "target", "a1", "outcome", "ok"}},
		{http.MethodPost, "/v1/admin/agents/a9/undrain", nil, []any{"action", "agent.undrain", "target", "a9", "outcome", "error"}},
		{http.MethodDelete, "/v1/admin/agents/a1", nil, []any{"action", "agent.remove", "target", "a1", "outcome", "ok"}},
		{http.MethodDelete, "/v1/admin/agents/live", nil, []any{"action", "agent.remove", "target", "live", "outcome", "error", "status", float64(409)}},
	}
	for _, tc := range cases {
		var r response
		switch b := tc.body.(type) {
		case nil:
			r = e.do(tc.method, tc.path, testRoot, nil)
		case string:
			r = e.do(tc.method, tc.path, testRoot, strings.NewReader(b))
		default:
			r = e.postJSON(tc.path, testRoot, b)
		}
		rec := sink.one(t)
		wantAudit(t, rec, append([]any{"actor", "root", "project", "default"}, tc.want...)...)
		if rec["request_id"] != r.header.Get(requestIDHeader) {
			t.Fatalf("%s: request_id %v, answered %s", tc.path, rec["request_id"], r.header.Get(requestIDHeader))
		}
	}
	// Reads of the cluster are not audited.
	e.do(http.MethodGet, "/v1/admin/cluster/status", testRoot, nil)
	e.do(http.MethodGet, "/v1/admin/agents", testRoot, nil)
	if recs := sink.records(t); len(recs) != 0 {
		t.Fatalf("reads audited: %v", recs)
	}
	// A key without the admin scope is refused, and that is recorded.
	k := e.createKey("beta", "batch", "read")
	sink.records(t)
	e.postJSON("/v1/admin/cluster/remove-peer", k, map[string]any{"id": "c2"}).wantError(t, 403, typeInvalidRequest, codeInsufficientPerms)
	wantAudit(t, sink.one(t), "action", "cluster.remove_peer", "project", "beta", "outcome", "denied")
	e.do(http.MethodPost, "/v1/admin/agents/a1/drain", k, nil)
	wantAudit(t, sink.one(t), "action", "agent.drain", "target", "a1", "outcome", "denied")
}

func TestAuditRateLimited(t *testing.T) {
	e, sink := auditEnv(t)
	k := e.createKeyLimited("alpha", map[string]any{"requests_per_second": 0.5}, "batch")
	sink.records(t)
	e.do(http.MethodDelete, "/v1/files/file-x", k, nil)
	wantAudit(t, sink.one(t), "action", "file.delete", "outcome", "error")
	e.do(http.MethodDelete, "/v1/files/file-x", k, nil).wantError(t, 429, typeRateLimit, codeRateLimit)
	wantAudit(t, sink.one(t), "action", "file.delete", "target", "file-x", "outcome", "denied", "status", float64(429))
}
