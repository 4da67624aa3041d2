package api

import (
	"fmt"
	"net/http"

	"github.com/vbatch/vbatch/fsm"
)

// listAgents serves GET /v1/admin/agents.
func (a *API) listAgents(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if err := a.consistent(r); err != nil {
		return err
	}
	agents, err := a.b.Agents(r.Context())
	if err != nil {
		return err
	}
	if agents == nil {
		agents = []AgentInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": agents})
	return nil
}

// drainAgent serves POST /v1/admin/agents/{id}/drain.
func (a *API) drainAgent(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if err := a.b.DrainAgent(r.Context(), id); err != nil {
		return fmt.Errorf("drain agent %s: %w", id, err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "draining": true})
	return nil
}

// undrainAgent serves POST /v1/admin/agents/{id}/undrain: the agent takes
// leases again (it keeps polling while drained).
func (a *API) undrainAgent(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if !a.b.AtFSMLevel(fsm.LevelLeaseTTL) {
		// A server of an older build would stop on the command.
		return unavailable("Undrain is not available until every coordinator runs a build that supports it; retry after the upgrade, or restart the agent (a restart undrains it).")
	}
	if err := a.b.UndrainAgent(r.Context(), id); err != nil {
		return fmt.Errorf("undrain agent %s: %w", id, err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "draining": false})
	return nil
}

// removeAgent serves DELETE /v1/admin/agents/{id}: the last step of
// retiring an agent, once it is stopped. The state forgets it (its status
// series end, and with them VbatchAgentDown) and any chunk it still held
// goes back to pending. An agent still alive in gossip is refused with 409:
// it would only register again.
func (a *API) removeAgent(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if err := a.b.RemoveAgent(r.Context(), id); err != nil {
		return fmt.Errorf("remove agent %s: %w", id, err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "object": "agent", "deleted": true})
	return nil
}
