package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// opsBackend adds ClusterOps to the fake backend and records the calls.
type opsBackend struct {
	*fakeBackend
	calls    []string
	restored []byte
}

func (o *opsBackend) TransferLeadership(_ context.Context, to string) (string, error) {
	o.calls = append(o.calls, "transfer "+to)
	switch to {
	case "":
		return "c2", nil
	case "c9":
		return "", fmt.Errorf("transfer: %w", ErrUnknownPeer)
	}
	return to, nil
}

func (o *opsBackend) RemovePeer(_ context.Context, id string, force bool) error {
	o.calls = append(o.calls, fmt.Sprintf("remove %s force=%t", id, force))
	switch id {
	case "c1":
		return fmt.Errorf("remove: %w", ErrPeerIsLeader)
	case "c9":
		return fmt.Errorf("remove: %w", ErrUnknownPeer)
	case "c4":
		if !force {
			return fmt.Errorf("remove peer c4: %w", &UnsafeRemovalError{ID: "c4", Voters: 2, Healthy: []string{"c1"}})
		}
	}
	return nil
}

func (o *opsBackend) JoinPool(_ context.Context, addrs []string) (int, error) {
	o.calls = append(o.calls, fmt.Sprint("join ", addrs))
	if addrs[0] == "dead:1" {
		return 0, errors.New("connection refused")
	}
	return len(addrs), nil
}

func (o *opsBackend) SnapshotState(context.Context) (*fsm.State, uint64, error) {
	var st *fsm.State
	o.f.View(func(s *fsm.State) { st = s.Clone() })
	return st, 42, nil
}

func (o *opsBackend) RestoreSnapshot(_ context.Context, data []byte) (uint64, error) {
	if _, _, err := fsm.ReadSnapshot(bytes.NewReader(data)); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	o.restored = data
	return 99, nil
}

func opsEnv(t *testing.T) (*env, *opsBackend) {
	t.Helper()
	b := &opsBackend{fakeBackend: newFakeBackend()}
	a := New(b, Config{RootKey: testRoot}, nil)
	return &env{t: t, b: b.fakeBackend, api: a, srv: newServer(t, a)}, b
}

func TestClusterTransferLeadership(t *testing.T) {
	e, b := opsEnv(t)
	r := e.postJSON("/v1/admin/cluster/transfer-leadership", testRoot, map[string]any{"to": "c3"})
	if r.status != 200 || r.json(t)["leader"] != "c3" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// No body picks any voter.
	r = e.do(http.MethodPost, "/v1/admin/cluster/transfer-leadership", testRoot, nil)
	if r.status != 200 || r.json(t)["leader"] != "c2" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	e.postJSON("/v1/admin/cluster/transfer-leadership", testRoot, map[string]any{"to": "c9"}).wantError(t, 404, typeInvalidRequest, codeNotFound)
	if fmt.Sprint(b.calls) != "[transfer c3 transfer  transfer c9]" {
		t.Fatalf("calls %q", b.calls)
	}
}

func TestClusterRemovePeer(t *testing.T) {
	e, b := opsEnv(t)
	r := e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{"id": "c2"})
	if m := r.json(t); r.status != 200 || m["id"] != "c2" || m["removed"] != true {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// A removal that would leave no healthy majority: 409 naming the
	// counts, unless forced.
	r = e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{"id": "c4"})
	r.wantError(t, 409, typeInvalidRequest, codeUnsafeRemoval)
	if msg := fmt.Sprint(r.json(t)["error"]); !strings.Contains(msg, "leave 2 voters of which 1 are healthy (c1), not a majority (2)") ||
		!strings.Contains(msg, "--force") {
		t.Fatalf("unsafe removal message: %s", r.body)
	}
	r = e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{"id": "c4", "force": true})
	if m := r.json(t); r.status != 200 || m["removed"] != true {
		t.Fatalf("forced: %d %s", r.status, r.body)
	}
	if got := fmt.Sprint(b.calls); got != "[remove c2 force=false remove c4 force=false remove c4 force=true]" {
		t.Fatalf("calls %s", got)
	}
	e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{"id": "c1"}).wantError(t, 409, typeInvalidRequest, codeConflict)
	e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{"id": "c9"}).wantError(t, 404, typeInvalidRequest, codeNotFound)
	e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{}).wantError(t, 400, typeInvalidRequest, codeMissingParam)
}

func TestClusterJoin(t *testing.T) {
	e, b := opsEnv(t)
	r := e.postJSON("/v1/admin/cluster/join", testRoot, map[string]any{"addresses": []string{"10.0.0.4:8003", " ", "10.0.0.5:8003"}})
	if r.status != 200 || r.json(t)["contacted"] != float64(2) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if b.calls[0] != "join [10.0.0.4:8003 10.0.0.5:8003]" {
		t.Fatalf("calls %q", b.calls)
	}
	e.postJSON("/v1/admin/cluster/join", testRoot, map[string]any{"addresses": []string{}}).wantError(t, 400, typeInvalidRequest, codeMissingParam)
	many := make([]string, maxJoinAddresses+1)
	for i := range many {
		many[i] = fmt.Sprintf("10.0.0.%d:8003", i)
	}
	e.postJSON("/v1/admin/cluster/join", testRoot, map[string]any{"addresses": many}).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	if len(b.calls) != 1 {
		t.Fatalf("calls %q", b.calls)
	}
	e.postJSON("/v1/admin/cluster/join", testRoot, map[string]any{"addresses": []string{"dead:1"}}).wantError(t, 502, typeServer, "join_failed")
}

func TestClusterSnapshotRoundTrip(t *testing.T) {
	e, b := opsEnv(t)
	if _, err := b.Apply(context.Background(), &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_1", Project: "p", Hash: []byte("h")}}); err != nil {
		t.Fatal(err)
	}
	r := e.do(http.MethodGet, "/v1/admin/cluster/snapshot", testRoot, nil)
	if r.status != 200 || r.header.Get("Content-Type") != "application/octet-stream" || r.header.Get(snapshotIndexHeader) != "42" {
		t.Fatalf("%d %v %s", r.status, r.header, r.body)
	}
	st, hdr, err := fsm.ReadSnapshot(bytes.NewReader(r.body))
	if err != nil || hdr.AppliedIndex != 42 || st.APIKeys["key_1"] == nil {
		t.Fatalf("saved snapshot: %v %v", hdr, err)
	}
	rr := e.do(http.MethodPost, "/v1/admin/cluster/snapshot/restore", testRoot, bytes.NewReader(r.body))
	if m := rr.json(t); rr.status != 200 || m["index"] != float64(99) || !bytes.Equal(b.restored, r.body) {
		t.Fatalf("%d %s", rr.status, rr.body)
	}
	e.do(http.MethodPost, "/v1/admin/cluster/snapshot/restore", testRoot, bytes.NewReader([]byte("junk"))).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
}

func TestClusterOpsNeedAdminAndSupport(t *testing.T) {
	// The plain fake backend has no ClusterOps.
	e := rootEnv(t)
	e.postJSON("/v1/admin/cluster/remove-peer", testRoot, map[string]any{"id": "c3"}).wantError(t, 501, typeServer, "not_implemented")
	e.do(http.MethodGet, "/v1/admin/cluster/snapshot", "", nil).wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
}
