package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/ids"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Key format: "vb-" and 40 base62 characters. The first keyPrefixLen
// characters are stored in clear to find a key's record, since the salted
// hash cannot be looked up directly.
const (
	keyPrefix      = "vb-"
	keyRandomLen   = 40
	keyPrefixLen   = 8
	keySaltLen     = 16
	defaultProject = "default"
)

// principal is who a request acts for.
type principal struct {
	project string
	keyID   string // "root", "noauth" or the stored key's id
	scopes  []vbatchv1.Scope
	// limits are the key's effective limits: zero is no limit.
	limits KeyLimits
}

// access is what a route requires of a principal.
type access int

const (
	// accessRead: GET on files, batches and models.
	accessRead access = iota
	// accessWrite: creating and deleting files and batches.
	accessWrite
	// accessModels: listing models, which inference keys may do too.
	accessModels
	// accessAdmin: keys and cluster administration.
	accessAdmin
	// accessInference: online chat/completions/embeddings.
	accessInference
)

// allows reports whether p may do what a needs.
func (p *principal) allows(a access) bool {
	for _, s := range p.scopes {
		switch s {
		case vbatchv1.Scope_SCOPE_ADMIN:
			return true
		case vbatchv1.Scope_SCOPE_BATCH:
			if a == accessRead || a == accessWrite || a == accessModels {
				return true
			}
		case vbatchv1.Scope_SCOPE_READ:
			if a == accessRead || a == accessModels {
				return true
			}
		case vbatchv1.Scope_SCOPE_INFERENCE:
			if a == accessModels || a == accessInference {
				return true
			}
		}
	}
	return false
}

var scopeNames = map[vbatchv1.Scope]string{
	vbatchv1.Scope_SCOPE_ADMIN:     "admin",
	vbatchv1.Scope_SCOPE_BATCH:     "batch",
	vbatchv1.Scope_SCOPE_INFERENCE: "inference",
	vbatchv1.Scope_SCOPE_READ:      "read",
}

func scopeName(s vbatchv1.Scope) string {
	if n, ok := scopeNames[s]; ok {
		return n
	}
	return s.String()
}

func parseScope(name string) (vbatchv1.Scope, bool) {
	for s, n := range scopeNames {
		if n == name {
			return s, true
		}
	}
	return 0, false
}

// authRequired reports whether requests must carry a key: always once a
// root key is set, and unless NoAuth says otherwise.
func (a *API) authRequired() bool { return a.cfg.RootKey != "" || !a.cfg.NoAuth }

// authenticate finds who r acts for.
func (a *API) authenticate(r *http.Request) (*principal, *apiError) {
	defaults := KeyLimits{}.effective(a.cfg.Limits.DefaultKeyLimits)
	if !a.authRequired() {
		return &principal{project: defaultProject, keyID: "noauth", scopes: []vbatchv1.Scope{vbatchv1.Scope_SCOPE_ADMIN}, limits: defaults}, nil
	}
	h := r.Header.Get("Authorization")
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(key) == "" {
		return nil, unauthorized("You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
	}
	key = strings.TrimSpace(key)
	if a.cfg.RootKey != "" && subtle.ConstantTimeCompare([]byte(key), []byte(a.cfg.RootKey)) == 1 {
		return &principal{project: defaultProject, keyID: "root", scopes: []vbatchv1.Scope{vbatchv1.Scope_SCOPE_ADMIN}, limits: defaults}, nil
	}
	if isStoredKeyForm(key) {
		// Keys live in the replicated state: on a node cut off from the
		// leader, a key revoked (or created) since would be judged wrong.
		if err := a.b.StateFresh(); err != nil {
			return nil, unavailable("This coordinator has lost contact with the cluster and cannot check API keys. Retry through another coordinator.")
		}
	}
	if p := a.lookupKey(key); p != nil {
		return p, nil
	}
	return nil, unauthorized(fmt.Sprintf("Incorrect API key provided: %s. You can create API keys with vbctl or POST /v1/admin/keys.", redact(key)))
}

// lookupKey finds the unrevoked stored key matching key: every record with
// the same clear prefix is a candidate, and the salted hashes are compared
// in constant time.
func (a *API) lookupKey(key string) *principal {
	if !isStoredKeyForm(key) {
		return nil
	}
	prefix := key[:keyPrefixLen]
	var found *principal
	a.b.FSM().View(func(s *fsm.State) {
		for _, k := range s.APIKeys {
			if k.Prefix != prefix || k.RevokedAt != 0 {
				continue
			}
			sum := hashKey(k.Salt, key)
			if subtle.ConstantTimeCompare(sum[:], k.Hash) == 1 {
				found = &principal{project: k.Project, keyID: k.Id, scopes: append([]vbatchv1.Scope(nil), k.Scopes...),
					limits: keyLimitsFromProto(k.Limits).effective(a.cfg.Limits.DefaultKeyLimits)}
				return
			}
		}
	})
	return found
}

// isStoredKeyForm reports whether key has the form of a stored key.
func isStoredKeyForm(key string) bool {
	return len(key) == len(keyPrefix)+keyRandomLen && strings.HasPrefix(key, keyPrefix)
}

func hashKey(salt []byte, key string) [sha256.Size]byte {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(key))
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// newKey makes a fresh secret and the record that stores it; limits may
// be nil (every limit the deployment's default).
func newKey(project, name string, scopes []vbatchv1.Scope, limits *vbatchv1.KeyLimits, now int64) (string, *vbatchv1.APIKey, error) {
	key := keyPrefix + ids.Random(keyRandomLen)
	salt := make([]byte, keySaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", nil, fmt.Errorf("key salt: %w", err)
	}
	sum := hashKey(salt, key)
	return key, &vbatchv1.APIKey{
		Id:        ids.New("key_"),
		Project:   project,
		Name:      name,
		Salt:      salt,
		Hash:      sum[:],
		Prefix:    key[:keyPrefixLen],
		Scopes:    scopes,
		CreatedAt: now,
		Limits:    limits,
	}, nil
}

// redact shows the start and end of a wrong key, as OpenAI does.
func redact(key string) string {
	if len(key) <= 8 {
		return "****"
	}
	return key[:3] + strings.Repeat("*", min(len(key)-7, 20)) + key[len(key)-4:]
}
