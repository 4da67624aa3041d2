package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
)

func TestAdminKeys(t *testing.T) {
	e := rootEnv(t)
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": "alpha", "name": "ci", "scopes": []string{"batch", "read", "batch"}})
	if r.status != http.StatusCreated {
		t.Fatalf("%d %s", r.status, r.body)
	}
	m := r.json(t)
	key := m["key"].(string)
	if !strings.HasPrefix(key, "vb-") || len(key) != 43 || !strings.HasPrefix(m["id"].(string), "key_") ||
		m["project"] != "alpha" || m["name"] != "ci" || m["prefix"] != key[:8] || m["created_at"] != float64(1_700_000_000) ||
		m["revoked_at"] != nil {
		t.Fatalf("created %v", m)
	}
	if s := m["scopes"].([]any); len(s) != 2 || s[0] != "batch" || s[1] != "read" {
		t.Fatalf("scopes %v", s)
	}
	// Defaults to the caller's project.
	e.b.advance(time.Second)
	r = e.postJSON("/v1/admin/keys", testRoot, map[string]any{"scopes": []string{"admin"}})
	if r.status != http.StatusCreated || r.json(t)["project"] != "default" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	l := e.do(http.MethodGet, "/v1/admin/keys", testRoot, nil)
	if strings.Contains(string(l.body), key) || strings.Contains(string(l.body), "salt") || strings.Contains(string(l.body), "hash") {
		t.Fatalf("listing leaks secrets: %s", l.body)
	}
	lm := l.json(t)
	if lm["object"] != "list" || len(lm["data"].([]any)) != 2 || lm["data"].([]any)[0].(map[string]any)["id"] != m["id"] {
		t.Fatalf("list %v", lm)
	}
	for _, tc := range []struct {
		body  map[string]any
		code  string
		param string
	}{
		{map[string]any{"project": "alpha"}, codeMissingParam, "scopes"},
		{map[string]any{"scopes": []string{"root"}}, codeInvalidValue, "scopes"},
		{map[string]any{"project": "no spaces", "scopes": []string{"read"}}, codeInvalidValue, "project"},
		{map[string]any{"name": strings.Repeat("n", 300), "scopes": []string{"read"}}, codeInvalidValue, "name"},
	} {
		before := e.b.snapshot()
		er := e.postJSON("/v1/admin/keys", testRoot, tc.body).wantError(t, 400, typeInvalidRequest, tc.code)
		if er["param"] != tc.param || e.b.snapshot() != before {
			t.Fatalf("%v: %v", tc.body, er)
		}
	}
}

func TestClusterStatus(t *testing.T) {
	e := rootEnv(t)
	r := e.do(http.MethodGet, "/v1/admin/cluster/status", testRoot, nil)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	m := r.json(t)
	s := m["servers"].([]any)[0].(map[string]any)
	if m["leader"] != "c1" || s["suffrage"] != "voter" || s["last_index"] != float64(7) || s["reachable"] != true {
		t.Fatalf("%v", m)
	}
}

func TestModels(t *testing.T) {
	e := rootEnv(t)
	m := e.do(http.MethodGet, "/v1/models", testRoot, nil).json(t)
	if m["object"] != "list" || len(m["data"].([]any)) != 0 {
		t.Fatalf("%v", m)
	}
	e2 := newEnv(t, Config{RootKey: testRoot, Models: func() []Model { return []Model{{"a", 1700000000}, {"org/b", 1700000100}} }})
	m = e2.do(http.MethodGet, "/v1/models", testRoot, nil).json(t)
	d := m["data"].([]any)
	if len(d) != 2 || d[0].(map[string]any)["id"] != "a" || d[1].(map[string]any)["object"] != "model" ||
		d[0].(map[string]any)["created"] != float64(1700000000) || m["first_id"] != "a" || m["last_id"] != "org/b" {
		t.Fatalf("%v", m)
	}
	r := e2.do(http.MethodGet, "/v1/models/org/b", testRoot, nil)
	if got := r.json(t); r.status != 200 || got["id"] != "org/b" || got["created"] != float64(1700000100) || got["owned_by"] != "vbatch" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	e2.do(http.MethodGet, "/v1/models/nope", testRoot, nil).wantError(t, 404, typeInvalidRequest, "model_not_found")
}

// TestKeyCreatedAtFromLeader: a key's created_at is the FSM's (the
// leader's) time, not the clock of the coordinator that took the request.
func TestKeyCreatedAtFromLeader(t *testing.T) {
	e := rootEnv(t)
	const ahead = 10 * time.Minute
	e.b.mu.Lock()
	e.b.leaderAhead = ahead
	e.b.mu.Unlock()
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": "alpha", "scopes": []string{"read"}})
	if r.status != http.StatusCreated {
		t.Fatalf("%d %s", r.status, r.body)
	}
	m := r.json(t)
	want := e.b.Now().Add(ahead).Unix()
	if m["created_at"] != float64(want) {
		t.Fatalf("created_at %v, want the leader's %d", m["created_at"], want)
	}
	e.b.f.View(func(s *fsm.State) {
		if k := s.APIKeys[m["id"].(string)]; k.GetCreatedAt() != want {
			t.Errorf("stored created_at %d, want %d", k.GetCreatedAt(), want)
		}
	})
}
