package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/vbatch/vbatch/fsm"
)

func TestUndrainAgent(t *testing.T) {
	e := rootEnv(t)
	r := e.do(http.MethodPost, "/v1/admin/agents/a1/undrain", testRoot, nil)
	if r.status != http.StatusOK {
		t.Fatalf("undrain: %d %s", r.status, r.body)
	}
	if got := r.json(t); got["id"] != "a1" || got["draining"] != false {
		t.Fatalf("undrain answered %v", got)
	}
	e.do(http.MethodPost, "/v1/admin/agents/ghost/undrain", testRoot, nil).wantError(t, http.StatusNotFound, typeInvalidRequest, codeNotFound)

	// Below the level that applies UndrainAgent, nothing is proposed.
	e.b.mu.Lock()
	e.b.level = fsm.LevelLeaseTTL - 1
	e.b.mu.Unlock()
	e.do(http.MethodPost, "/v1/admin/agents/a1/undrain", testRoot, nil).wantError(t, http.StatusServiceUnavailable, typeServer, codeUnavailable)
}

// TestRemoveAgent: DELETE /v1/admin/agents/{id} forgets a stopped agent,
// refuses one alive in gossip with 409 (stop it first), answers 404 for an
// unknown one, and needs the admin scope.
func TestRemoveAgent(t *testing.T) {
	e := rootEnv(t)
	r := e.do(http.MethodDelete, "/v1/admin/agents/a1", testRoot, nil)
	if r.status != http.StatusOK {
		t.Fatalf("remove: %d %s", r.status, r.body)
	}
	if got := r.json(t); got["id"] != "a1" || got["object"] != "agent" || got["deleted"] != true {
		t.Fatalf("remove answered %v", got)
	}
	r = e.do(http.MethodDelete, "/v1/admin/agents/live", testRoot, nil)
	r.wantError(t, http.StatusConflict, typeInvalidRequest, codeConflict)
	if !strings.Contains(string(r.body), "stop it first") {
		t.Fatalf("409 does not say what to do: %s", r.body)
	}
	e.do(http.MethodDelete, "/v1/admin/agents/ghost", testRoot, nil).wantError(t, http.StatusNotFound, typeInvalidRequest, codeNotFound)
	k := e.createKey("beta", "batch", "read")
	e.do(http.MethodDelete, "/v1/admin/agents/a1", k, nil).wantError(t, http.StatusForbidden, typeInvalidRequest, codeInsufficientPerms)
}
