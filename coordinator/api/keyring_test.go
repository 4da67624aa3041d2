package api

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/vbatch/vbatch/gossip"
)

// keyringBackend adds KeyringOps to the ops backend.
type keyringBackend struct {
	*opsBackend
	ops []string
}

func (k *keyringBackend) KeyringOp(_ context.Context, op, key string) (*gossip.KeyringResult, error) {
	k.ops = append(k.ops, op+" "+key)
	switch key {
	case "bad":
		return nil, fmt.Errorf("keyring: %w", gossip.ErrInvalidKey)
	case "primary":
		return nil, fmt.Errorf("keyring: %w", gossip.ErrPrimaryKey)
	case "missing":
		return nil, fmt.Errorf("keyring: %w", gossip.ErrKeyNotInstalled)
	case "partial":
		return &gossip.KeyringResult{Op: gossip.KeyringOpKind(op), NumNodes: 3, NumResp: 3, NumErr: 1,
			Errors: map[string]string{"a1": "disk full"}}, fmt.Errorf("keyring: %w", gossip.ErrKeyringPartial)
	case "off":
		return nil, fmt.Errorf("keyring: %w", gossip.ErrNoKeyring)
	}
	return &gossip.KeyringResult{Op: gossip.KeyringOpKind(op), NumNodes: 3, NumResp: 3}, nil
}

func TestClusterKeyring(t *testing.T) {
	e, ob := opsEnv(t)
	kb := &keyringBackend{opsBackend: ob}
	a := New(kb, Config{RootKey: testRoot}, nil)
	e.api, e.srv = a, newServer(t, a)

	r := e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "install", "key": "good"})
	if r.status != 200 || r.json(t)["num_nodes"] != float64(3) {
		t.Fatalf("install: %d %s", r.status, r.body)
	}
	if r := e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "list"}); r.status != 200 {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "install", "key": "bad"}).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "remove", "key": "primary"}).wantError(t, 409, typeInvalidRequest, codeConflict)
	e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "use", "key": "missing"}).wantError(t, 409, typeInvalidRequest, codeConflict)
	e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "install", "key": "off"}).wantError(t, 409, typeInvalidRequest, codeConflict)
	p := e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "install", "key": "partial"})
	p.wantError(t, 502, typeServer, "keyring_partial")
	if !strings.Contains(string(p.body), "a1: disk full") {
		t.Fatalf("partial answer: %s", p.body)
	}
	// Bad requests never reach the keyring.
	before := len(kb.ops)
	e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "rotate", "key": "x"}).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	e.postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "use"}).wantError(t, 400, typeInvalidRequest, "missing_required_parameter")
	if len(kb.ops) != before {
		t.Fatalf("refused requests reached the backend: %v", kb.ops[before:])
	}
	// Admin only; and a backend without keyring support answers 501.
	rootEnv(t).postJSON("/v1/admin/cluster/keyring", testRoot, map[string]any{"op": "list"}).wantError(t, 501, typeServer, "not_implemented")
}
