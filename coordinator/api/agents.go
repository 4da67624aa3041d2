package api

import (
	"errors"
	"net/http"
)

// ErrNoAgent is returned by Config.Inference when no live agent serves the
// requested model; it is answered with 503.
var ErrNoAgent = errors.New("no live agent serves this model")

func (a *API) listAgents(w http.ResponseWriter, r *http.Request, _ *principal) error {
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

func (a *API) drainAgent(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if err := a.b.DrainAgent(r.Context(), id); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "draining": true})
	return nil
}

// inference hands an online request to the router.
func (a *API) inference(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if a.cfg.Inference == nil {
		return &apiError{status: http.StatusServiceUnavailable, typ: typeServer, code: codeUnavailable, message: "Online inference is not enabled on this server."}
	}
	err := a.cfg.Inference(w, r)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNoAgent):
		return &apiError{status: http.StatusServiceUnavailable, typ: typeServer, code: "model_unavailable", param: "model", message: sentence(err), cause: err}
	default:
		return &apiError{status: http.StatusBadRequest, typ: typeInvalidRequest, code: codeInvalidValue, message: sentence(err), cause: err}
	}
}
