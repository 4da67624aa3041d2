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
		`{"id":"key_root","object":"api_key","project":"admin","name":"","prefix":"vb-sk-root","scopes":["admin"],"created_at":1795780800,"revoked_at":null},` +
		`{"id":"key_7Hq","object":"api_key","project":"search","name":"ci","prefix":"vb-sk-7Hq2","scopes":["batch","read"],"created_at":1795780800,"revoked_at":1795784400}` +
		`],"first_id":"key_root","last_id":"key_7Hq","has_more":false}`
	f.reply("GET /v1/admin/keys", 200, body)
	r := f.run("keys", "list").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/admin/keys", "")
	checkLines(t, r.stdout, `ID        PROJECT  NAME  PREFIX      SCOPES      CREATED               REVOKED
key_root  admin    -     vb-sk-root  admin       2026-11-27 12:00:00Z  -
key_7Hq   search   ci    vb-sk-7Hq2  batch,read  2026-11-27 12:00:00Z  2026-11-27 13:00:00Z
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
