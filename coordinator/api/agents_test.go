package api

import (
	"net/http"
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
