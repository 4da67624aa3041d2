package api

import (
	"cmp"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// projectRE is a project name.
var projectRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

const maxKeyName = 256

// createKeyRequest is the body of POST /v1/admin/keys.
type createKeyRequest struct {
	Project string   `json:"project"`
	Name    string   `json:"name"`
	Scopes  []string `json:"scopes"`
	// Limits is optional: an absent or zero field takes the deployment's
	// default, a negative one is no limit.
	Limits *keyLimitsObject `json:"limits"`
}

// check validates the request and returns its scopes and limits.
func (req *createKeyRequest) check() ([]vbatchv1.Scope, *vbatchv1.KeyLimits, error) {
	if !projectRE.MatchString(req.Project) {
		return nil, nil, invalidValue("project", "Invalid value for 'project': %q. A project name is 1 to 64 letters, digits, '.', '_' or '-'.", req.Project)
	}
	if len(req.Name) > maxKeyName {
		return nil, nil, invalidValue("name", "Invalid value for 'name': longer than %d bytes.", maxKeyName)
	}
	if len(req.Scopes) == 0 {
		return nil, nil, missingParam("scopes")
	}
	var scopes []vbatchv1.Scope
	for _, name := range req.Scopes {
		s, ok := parseScope(name)
		if !ok {
			return nil, nil, invalidValue("scopes", "Invalid scope %q. Supported scopes are: 'admin', 'batch', 'inference' and 'read'.", name)
		}
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	var limits *vbatchv1.KeyLimits
	if l := req.Limits; l != nil {
		if math.IsNaN(l.RequestsPerSecond) || math.IsInf(l.RequestsPerSecond, 0) || l.RequestsPerSecond > maxKeyRPS {
			return nil, nil, invalidValue("limits.requests_per_second", "Invalid value for 'limits.requests_per_second': at most %d; 0 takes the default, a negative value is no limit.", maxKeyRPS)
		}
		if *l != (keyLimitsObject{}) {
			limits = &vbatchv1.KeyLimits{RequestsPerSecond: l.RequestsPerSecond, MaxEnqueuedRequests: l.MaxEnqueuedRequests, MaxFileBytes: l.MaxFileBytes}
		}
	}
	return scopes, limits, nil
}

// maxKeyRPS bounds a key's rate: beyond it a limit means nothing.
const maxKeyRPS = 1_000_000

// createKey serves POST /v1/admin/keys: the answer shows the secret, the
// only time it is ever shown.
func (a *API) createKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req createKeyRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Project == "" {
		req.Project = p.project
	}
	setAuditTarget(r, req.Project, "")
	scopes, limits, err := req.check()
	if err != nil {
		return err
	}
	// created_at is left to the FSM (the leader's time), not dated on
	// this coordinator's clock.
	secret, k, err := newKey(req.Project, req.Name, scopes, limits, 0)
	if err != nil {
		return err
	}
	setAuditTarget(r, "", k.Id)
	if _, err := a.b.Apply(r.Context(), &vbatchv1.CreateAPIKey{Key: k}); err != nil {
		return fmt.Errorf("create api key %s: %w", k.Id, err)
	}
	a.b.FSM().View(func(s *fsm.State) {
		if stored, ok := s.APIKeys[k.Id]; ok {
			k.CreatedAt = stored.CreatedAt
		}
	})
	o := toKeyObject(k)
	o.Key = secret
	writeJSON(w, http.StatusCreated, o)
	return nil
}

// listKeys serves GET /v1/admin/keys: every key of every project, oldest
// first, without secrets.
func (a *API) listKeys(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if err := a.consistent(r); err != nil {
		return err
	}
	var keys []keyObject
	a.b.FSM().View(func(s *fsm.State) {
		for _, k := range s.APIKeys {
			keys = append(keys, toKeyObject(k))
		}
	})
	slices.SortFunc(keys, func(x, y keyObject) int {
		return cmp.Or(cmp.Compare(x.CreatedAt, y.CreatedAt), cmp.Compare(x.ID, y.ID))
	})
	out := listObject[keyObject]{Object: "list", Data: keys}
	if out.Data == nil {
		out.Data = []keyObject{}
	}
	if len(keys) > 0 {
		out.FirstID, out.LastID = &keys[0].ID, &keys[len(keys)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// revokeKey serves DELETE /v1/admin/keys/{id}; revoking a revoked key
// answers it as it is.
func (a *API) revokeKey(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	var k *vbatchv1.APIKey
	err := a.find(r, func(s *fsm.State) bool {
		if got, ok := s.APIKeys[id]; ok {
			k = proto.Clone(got).(*vbatchv1.APIKey)
		}
		return k != nil
	})
	if err != nil {
		return err
	}
	if k == nil {
		return notFound("id", "No such API key: %s", id)
	}
	setAuditTarget(r, k.Project, "")
	if k.RevokedAt == 0 {
		if _, err := a.b.Apply(r.Context(), &vbatchv1.RevokeAPIKey{Id: id}); err != nil {
			return fmt.Errorf("revoke api key %s: %w", id, err)
		}
		if k = a.findKey(id); k == nil {
			return notFound("id", "No such API key: %s", id)
		}
	}
	writeJSON(w, http.StatusOK, toKeyObject(k))
	return nil
}

func (a *API) findKey(id string) *vbatchv1.APIKey {
	var k *vbatchv1.APIKey
	a.b.FSM().View(func(s *fsm.State) {
		if got, ok := s.APIKeys[id]; ok {
			k = proto.Clone(got).(*vbatchv1.APIKey)
		}
	})
	return k
}

// clusterStatus serves GET /v1/admin/cluster/status.
func (a *API) clusterStatus(w http.ResponseWriter, r *http.Request, _ *principal) error {
	st, err := a.b.ClusterStatus(r.Context())
	if err != nil {
		return fmt.Errorf("cluster status: %w", err)
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// models lists Config.Models.
func (a *API) models() []Model {
	if a.cfg.Models == nil {
		return nil
	}
	return a.cfg.Models()
}

// listModels serves GET /v1/models.
func (a *API) listModels(w http.ResponseWriter, _ *http.Request, _ *principal) error {
	m := a.models()
	out := listObject[modelObject]{Object: "list", Data: make([]modelObject, len(m))}
	for i, md := range m {
		out.Data[i] = toModelObject(md)
	}
	if len(m) > 0 {
		out.FirstID, out.LastID = &out.Data[0].ID, &out.Data[len(m)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// getModel serves GET /v1/models/{id}.
func (a *API) getModel(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	models := a.models()
	i := slices.IndexFunc(models, func(m Model) bool { return m.ID == id })
	if i < 0 {
		return &apiError{status: http.StatusNotFound, typ: typeInvalidRequest, code: "model_not_found", param: "model",
			message: fmt.Sprintf("The model '%s' does not exist or no agent serves it.", id)}
	}
	writeJSON(w, http.StatusOK, toModelObject(models[i]))
	return nil
}

// sortedStrings returns s sorted.
func sortedStrings(s []string) []string {
	slices.Sort(s)
	return s
}
