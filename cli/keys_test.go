package cli

import (
	"strings"
	"testing"
)

const createdKey = `{"id":"key_7Hq","object":"api_key","key":"vb-sk-7Hq2secretsecret","project":"search","name":"ci","prefix":"vb-sk-7Hq2","scopes":["batch","read"],"created_at":1795780800,"revoked_at":null}`

func TestKeysCreate(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/keys", 201, createdKey)

	r := f.run("keys", "create", "--project", "search", "--name", "ci", "--scope", "batch", "--scope", "read").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/admin/keys", "")
	checkJSONBody(t, req, `{"project":"search","name":"ci","scopes":["batch","read"]}`)
	checkLines(t, r.stdout, `ID       key_7Hq
PROJECT  search
NAME     ci
SCOPES   batch,read
LIMITS   default
KEY      vb-sk-7Hq2secretsecret
`)
	if strings.Count(r.stdout, "vb-sk-7Hq2secretsecret") != 1 {
		t.Errorf("the key is not printed exactly once:\n%s", r.stdout)
	}
	if r.stderr != "Warning: store this key now; it cannot be shown again.\n" {
		t.Errorf("stderr = %q", r.stderr)
	}

	r = f.run("keys", "create", "--project", "search", "-o", "json").ok(t)
	checkJSONBody(t, f.requests()[1], `{"project":"search","name":"","scopes":["batch","inference"]}`)
	checkSameJSON(t, r.stdout, createdKey)
}

func TestKeysCreateLimits(t *testing.T) {
	f := newFakeServer(t)
	limited := `{"id":"key_8","object":"api_key","key":"vb-secret","project":"search","name":"","prefix":"vb-secre","scopes":["batch"],` +
		`"created_at":1795780800,"revoked_at":null,"limits":{"requests_per_second":0.5,"max_enqueued_requests":10000,"max_file_bytes":-1}}`
	f.reply("POST /v1/admin/keys", 201, limited)
	r := f.run("keys", "create", "--project", "search", "--scope", "batch", "--rps", "0.5",
		"--max-enqueued-requests", "10000", "--max-file-bytes", "-1").ok(t)
	checkJSONBody(t, f.only(), `{"project":"search","name":"","scopes":["batch"],`+
		`"limits":{"requests_per_second":0.5,"max_enqueued_requests":10000,"max_file_bytes":-1}}`)
	if !strings.Contains(r.stdout, "LIMITS   rps=0.5,enqueued=10000,file_bytes=unlimited\n") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	// Only the limits given are sent; the others take the default.
	f.run("keys", "create", "--project", "search", "--max-file-bytes", "1048576").ok(t)
	checkJSONBody(t, f.requests()[1], `{"project":"search","name":"","scopes":["batch","inference"],"limits":{"max_file_bytes":1048576}}`)
	for _, bad := range [][]string{{"--rps", "NaN"}, {"--rps", "fast"}, {"--max-file-bytes", "1.5"}} {
		r := f.run(append([]string{"keys", "create", "--project", "search"}, bad...)...)
		if r.code == 0 {
			t.Errorf("%v accepted", bad)
		}
	}
	if n := len(f.requests()); n != 2 {
		t.Errorf("%d requests: refused flags reached the server", n)
	}
}

func TestKeysCreateRefused(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/keys", 403, openAIError("This key lacks the admin scope.", "invalid_request_error", "insufficient_permissions"))
	r := f.run("keys", "create", "--project", "search")
	if r.code != 1 || r.stderr != "Error: This key lacks the admin scope. (HTTP 403, insufficient_permissions)\n" || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestKeysList(t *testing.T) {
	f := newFakeServer(t)
	body := `{"object":"list","data":[` +
		`{"id":"key_root","object":"api_key","project":"admin","name":"","prefix":"vb-sk-root","scopes":["admin"],"created_at":1795780800,"revoked_at":null,` +
		`"limits":{"requests_per_second":0,"max_enqueued_requests":0,"max_file_bytes":0}},` +
		`{"id":"key_7Hq","object":"api_key","project":"search","name":"ci","prefix":"vb-sk-7Hq2","scopes":["batch","read"],"created_at":1795780800,"revoked_at":1795784400,` +
		`"limits":{"requests_per_second":2.5,"max_enqueued_requests":-1,"max_file_bytes":10737418240}}` +
		`],"first_id":"key_root","last_id":"key_7Hq","has_more":false}`
	f.reply("GET /v1/admin/keys", 200, body)
	r := f.run("keys", "list").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/admin/keys", "")
	checkLines(t, r.stdout, `ID        PROJECT  NAME  PREFIX      SCOPES      LIMITS                                             CREATED               REVOKED
key_root  admin    -     vb-sk-root  admin       default                                            2026-11-27 12:00:00Z  -
key_7Hq   search   ci    vb-sk-7Hq2  batch,read  rps=2.5,enqueued=unlimited,file_bytes=10737418240  2026-11-27 12:00:00Z  2026-11-27 13:00:00Z
`)
	r = f.run("keys", "list", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, body)
}

func TestKeysRevoke(t *testing.T) {
	f := newFakeServer(t)
	body := `{"id":"key_7Hq","object":"api_key","project":"search","name":"ci","prefix":"vb-sk-7Hq2","scopes":["batch"],"created_at":1795780800,"revoked_at":1795784400}`
	f.reply("DELETE /v1/admin/keys/{id}", 200, body)
	r := f.run("keys", "revoke", "key_7Hq").ok(t)
	checkRequest(t, f.only(), "DELETE", "/v1/admin/keys/key_7Hq", "")
	if r.stdout != "Revoked key_7Hq\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("keys", "revoke", "key_7Hq", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, body)
}
