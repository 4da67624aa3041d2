package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/vbatch/vbatch/fsm"
)

func TestAuthRequired(t *testing.T) {
	e := rootEnv(t)
	er := e.do(http.MethodGet, "/v1/files", "", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	if !strings.Contains(er["message"].(string), "didn't provide an API key") {
		t.Fatalf("%v", er)
	}
	e.do(http.MethodGet, "/v1/files", "vb-wrong", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	e.do(http.MethodGet, "/v1/files", "vb-"+strings.Repeat("A", 40), nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	r := e.do(http.MethodGet, "/v1/files", "", nil, "Authorization", "Basic "+testRoot)
	r.wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	if r := e.do(http.MethodGet, "/v1/files", testRoot, nil); r.status != 200 {
		t.Fatalf("root key: %d %s", r.status, r.body)
	}
	// The key never shows in full in the error.
	bad := "vb-" + strings.Repeat("Q", 40)
	if r := e.do(http.MethodGet, "/v1/files", bad, nil); strings.Contains(string(r.body), bad) {
		t.Fatalf("key echoed: %s", r.body)
	}
}

func TestNoAuth(t *testing.T) {
	e := newEnv(t, Config{NoAuth: true})
	if r := e.do(http.MethodGet, "/v1/admin/keys", "", nil); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Any key (SDKs always send one) is fine.
	if r := e.do(http.MethodGet, "/v1/files", "sk-anything", nil); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// A root key switches authentication on even with NoAuth.
	e2 := newEnv(t, Config{NoAuth: true, RootKey: testRoot})
	e2.do(http.MethodGet, "/v1/files", "", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	// Neither NoAuth nor a root key: only stored keys, so nothing passes.
	e3 := newEnv(t, Config{})
	e3.do(http.MethodGet, "/v1/files", "", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
}

func TestScopes(t *testing.T) {
	e := rootEnv(t)
	batchKey := e.createKey("default", "batch")
	readKey := e.createKey("default", "read")
	infKey := e.createKey("default", "inference")
	in := e.uploadOK(batchKey, "batch", batchLines(1))
	id := e.batchOK(batchKey, in)

	for _, k := range []string{batchKey, readKey} {
		for _, p := range []string{"/v1/files", "/v1/files/" + in, "/v1/files/" + in + "/content", "/v1/batches", "/v1/batches/" + id, "/v1/models"} {
			if r := e.do(http.MethodGet, p, k, nil); r.status != 200 {
				t.Fatalf("GET %s: %d %s", p, r.status, r.body)
			}
		}
	}
	before := e.b.snapshot()
	forbid := func(r response) { r.wantError(t, 403, typeInvalidRequest, codeInsufficientPerms) }
	forbid(e.upload(readKey, field{name: "purpose", value: "batch"}, field{name: "file", filename: "a", value: batchLines(1)}))
	forbid(e.postJSON("/v1/batches", readKey, map[string]any{"input_file_id": in, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
	forbid(e.do(http.MethodPost, "/v1/batches/"+id+"/cancel", readKey, nil))
	forbid(e.do(http.MethodDelete, "/v1/files/"+in, readKey, nil))
	forbid(e.do(http.MethodGet, "/v1/files", infKey, nil))
	forbid(e.do(http.MethodGet, "/v1/admin/keys", batchKey, nil))
	forbid(e.postJSON("/v1/admin/keys", batchKey, map[string]any{"scopes": []string{"admin"}}))
	forbid(e.do(http.MethodGet, "/v1/admin/cluster/status", readKey, nil))
	if e.b.snapshot() != before {
		t.Fatal("a forbidden request changed state")
	}
	if r := e.do(http.MethodGet, "/v1/models", infKey, nil); r.status != 200 {
		t.Fatalf("models with inference key: %d %s", r.status, r.body)
	}
}

func TestProjectsIsolated(t *testing.T) {
	e := rootEnv(t)
	a := e.createKey("alpha", "batch")
	b := e.createKey("beta", "batch")
	fa := e.uploadOK(a, "batch", batchLines(1))
	ba := e.batchOK(a, fa)
	fb := e.uploadOK(b, "batch", batchLines(2))

	notFound := func(r response) { r.wantError(t, 404, typeInvalidRequest, codeNotFound) }
	notFound(e.do(http.MethodGet, "/v1/files/"+fa, b, nil))
	notFound(e.do(http.MethodGet, "/v1/files/"+fa+"/content", b, nil))
	notFound(e.do(http.MethodDelete, "/v1/files/"+fa, b, nil))
	notFound(e.do(http.MethodGet, "/v1/batches/"+ba, b, nil))
	notFound(e.do(http.MethodPost, "/v1/batches/"+ba+"/cancel", b, nil))
	// The root key is project default: it does not see alpha's objects.
	notFound(e.do(http.MethodGet, "/v1/files/"+fa, testRoot, nil))
	// Another project's file as batch input reads as missing.
	er := e.postJSON("/v1/batches", b, map[string]any{"input_file_id": fa, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).
		wantError(t, 404, typeInvalidRequest, codeNotFound)
	if er["message"] != "No such File object: "+fa {
		t.Fatalf("%v", er)
	}
	ids := func(key, path string) []string {
		var out []string
		for _, d := range e.do(http.MethodGet, path, key, nil).json(t)["data"].([]any) {
			out = append(out, d.(map[string]any)["id"].(string))
		}
		return out
	}
	if got := ids(b, "/v1/files"); len(got) != 1 || got[0] != fb {
		t.Fatalf("beta sees files %v", got)
	}
	if got := ids(b, "/v1/batches"); len(got) != 0 {
		t.Fatalf("beta sees batches %v", got)
	}
	if got := ids(a, "/v1/batches"); len(got) != 1 || got[0] != ba {
		t.Fatalf("alpha sees batches %v", got)
	}
	// The after cursor of another project's object is unknown too.
	e.do(http.MethodGet, "/v1/batches?after="+ba, b, nil).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	var project string
	e.b.f.View(func(s *fsm.State) { project = s.Batches[ba].Project })
	if project != "alpha" {
		t.Fatalf("batch project %q", project)
	}
}

func TestRevokedKey(t *testing.T) {
	e := rootEnv(t)
	k := e.createKey("default", "batch")
	var id string
	for _, d := range e.do(http.MethodGet, "/v1/admin/keys", testRoot, nil).json(t)["data"].([]any) {
		id = d.(map[string]any)["id"].(string)
	}
	if r := e.do(http.MethodGet, "/v1/files", k, nil); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	r := e.do(http.MethodDelete, "/v1/admin/keys/"+id, testRoot, nil)
	if r.status != 200 || r.json(t)["revoked_at"] == nil {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	e.do(http.MethodGet, "/v1/files", k, nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	// Revoking again answers the key as it is.
	if r := e.do(http.MethodDelete, "/v1/admin/keys/"+id, testRoot, nil); r.status != 200 {
		t.Fatalf("second revoke: %d %s", r.status, r.body)
	}
	e.do(http.MethodDelete, "/v1/admin/keys/key_nope", testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
}

func TestKeyLookupPrefixCollision(t *testing.T) {
	// Two keys sharing a prefix are told apart by their salted hashes.
	e := rootEnv(t)
	k1, rec1, err := newKey("p1", "a", nil, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	k2 := k1[:keyPrefixLen] + strings.Repeat("z", len(k1)-keyPrefixLen)
	_, rec2, err := newKey("p2", "b", nil, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	sum := hashKey(rec2.Salt, k2)
	rec2.Hash, rec2.Prefix = sum[:], k2[:keyPrefixLen]
	e.applyKeys(t, rec1, rec2)
	if p := e.api.lookupKey(k1); p == nil || p.project != "p1" {
		t.Fatalf("k1 -> %+v", p)
	}
	if p := e.api.lookupKey(k2); p == nil || p.project != "p2" {
		t.Fatalf("k2 -> %+v", p)
	}
	if p := e.api.lookupKey(k1[:len(k1)-1] + "!"); p != nil {
		t.Fatalf("a wrong key matched %+v", p)
	}
}

// TestStoredKeysNeedAFreshState: a coordinator cut off from the leader
// cannot know whether a key was revoked since: stored keys get 503 (retry
// elsewhere) rather than being judged on a stale copy; the root key,
// which is configuration, still works.
func TestStoredKeysNeedAFreshState(t *testing.T) {
	e := rootEnv(t)
	k := e.createKey("default", "batch")
	e.b.mu.Lock()
	e.b.staleErr = fmt.Errorf("no contact with the leader for 1m: %w", ErrUnavailable)
	e.b.mu.Unlock()
	e.do(http.MethodGet, "/v1/files", k, nil).wantError(t, 503, typeServer, codeUnavailable)
	// A key of stored form that is not stored: the node cannot tell either.
	other := k[:len(k)-1] + "0"
	if other == k {
		other = k[:len(k)-1] + "1"
	}
	e.do(http.MethodGet, "/v1/files", other, nil).wantError(t, 503, typeServer, codeUnavailable)
	if r := e.do(http.MethodGet, "/v1/files", testRoot, nil); r.status != 200 {
		t.Fatalf("root key on a cut-off node: %d %s", r.status, r.body)
	}
	e.b.mu.Lock()
	e.b.staleErr = nil
	e.b.mu.Unlock()
	if r := e.do(http.MethodGet, "/v1/files", k, nil); r.status != 200 {
		t.Fatalf("key once the node is back: %d %s", r.status, r.body)
	}
}
