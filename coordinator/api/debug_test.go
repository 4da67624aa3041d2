package api

import (
	"net/http"
	"strings"
	"testing"
)

func TestPprofAdminOnly(t *testing.T) {
	e := rootEnv(t)
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"scopes": []string{"batch", "read"}})
	if r.status != http.StatusCreated {
		t.Fatalf("%d %s", r.status, r.body)
	}
	batchKey := r.json(t)["key"].(string)

	e.do(http.MethodGet, "/debug/pprof/", "", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	e.do(http.MethodGet, "/debug/pprof/heap", batchKey, nil).wantError(t, 403, typeInvalidRequest, codeInsufficientPerms)
	e.do(http.MethodGet, "/debug/pprof/cmdline", batchKey, nil).wantError(t, 403, typeInvalidRequest, codeInsufficientPerms)

	idx := e.do(http.MethodGet, "/debug/pprof/", testRoot, nil)
	if idx.status != 200 || !strings.Contains(string(idx.body), "goroutine") {
		t.Fatalf("index: %d %.200s", idx.status, idx.body)
	}
	g := e.do(http.MethodGet, "/debug/pprof/goroutine?debug=1", testRoot, nil)
	if g.status != 200 || !strings.Contains(string(g.body), "goroutine profile:") {
		t.Fatalf("goroutine: %d %.200s", g.status, g.body)
	}
	if c := e.do(http.MethodGet, "/debug/pprof/cmdline", testRoot, nil); c.status != 200 || len(c.body) == 0 {
		t.Fatalf("cmdline: %d", c.status)
	}
	if n := e.do(http.MethodGet, "/debug/pprof/nosuch", testRoot, nil); n.status != 404 {
		t.Fatalf("unknown profile: %d", n.status)
	}
}
