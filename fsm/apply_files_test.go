package fsm

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestCreateAPIKey(t *testing.T) {
	h := NewHarness()
	k := &vbatchv1.APIKey{Id: "key_1", Project: proj, Name: "ci", Hash: []byte{1}, Salt: []byte{2}, Prefix: "vb-ab",
		Scopes: []vbatchv1.Scope{vbatchv1.Scope_SCOPE_BATCH}}
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: k})
	got := h.State().APIKeys["key_1"]
	if got.CreatedAt != h.Clock.Unix() || got.Name != "ci" {
		t.Fatalf("stored key = %v", got)
	}
	h.Advance(time.Minute)
	unchanged(t, h, &vbatchv1.CreateAPIKey{Key: k}) // re-applied; created_at was stamped by the first
	refused(t, h, ErrExists, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_1", Project: proj, Hash: []byte{3}}})
	refused(t, h, ErrInvalid, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_2", Project: proj}})
	refused(t, h, ErrInvalid, &vbatchv1.CreateAPIKey{})
}

func TestRevokeAPIKey(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_1", Project: proj, Hash: []byte{1}}})
	h.Advance(time.Minute)
	h.MustApply(t, &vbatchv1.RevokeAPIKey{Id: "key_1"})
	if got := h.State().APIKeys["key_1"].RevokedAt; got != h.Clock.Unix() {
		t.Fatalf("revoked_at = %d", got)
	}
	h.Advance(time.Minute)
	unchanged(t, h, &vbatchv1.RevokeAPIKey{Id: "key_1"}) // keeps the first revocation time
	refused(t, h, ErrNotFound, &vbatchv1.RevokeAPIKey{Id: "nope"})
}

func TestCreateFile(t *testing.T) {
	h := NewHarness()
	cmd := inputFile("file-1", 3)
	h.MustApply(t, cmd)
	got := h.State().Files["file-1"]
	want := proto.Clone(cmd.File).(*vbatchv1.File)
	want.CreatedAt = h.Clock.Unix()
	if !proto.Equal(got, want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
	h.Advance(time.Second)
	unchanged(t, h, cmd)
	other := inputFile("file-1", 4)
	refused(t, h, ErrExists, other)
	refused(t, h, ErrInvalid, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "x"}})
	refused(t, h, ErrInvalid, &vbatchv1.CreateFile{File: &vbatchv1.File{Project: proj}})
	refused(t, h, ErrInvalid, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "x", Project: proj, Bytes: -1}})
}

func TestDeleteFile(t *testing.T) {
	h := validating(t, 10)
	h.MustApply(t, inputFile("file-2", 1))
	refused(t, h, ErrNotFound, &vbatchv1.DeleteFile{Id: "file-2", Project: "other"})
	refused(t, h, ErrNotFound, &vbatchv1.DeleteFile{Id: "nope"})
	refused(t, h, ErrConflict, &vbatchv1.DeleteFile{Id: "file-in", Project: proj}) // batch_1 is validating on it
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-2", Project: proj})
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: batch})
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-in"}) // admin; the batch is over
	if fs := h.State().Files; len(fs) != 0 {
		t.Fatalf("files left: %v", fs)
	}
	refused(t, h, ErrNotFound, &vbatchv1.DeleteFile{Id: "file-in"})
}

// TestDeleteFileKeepsPosition: with keep_position a delete leaves the
// file's list position, pruned by the first command applied a day after
// the delete (a refused one changes nothing, this included); without it,
// nothing is left.
func TestDeleteFileKeepsPosition(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, inputFile("file-1", 1))
	h.MustApply(t, inputFile("file-2", 1))
	created := h.Clock.Unix()
	h.Advance(time.Minute)
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-1", Project: proj})
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-2", Project: proj, KeepPosition: true})
	deleted := h.Clock.Unix()
	tombs := h.State().FileTombstones
	want := &vbatchv1.FileTombstone{Id: "file-2", Project: proj, CreatedAt: created, DeletedAt: deleted}
	if len(tombs) != 1 || !proto.Equal(tombs["file-2"], want) {
		t.Fatalf("tombstones %v, want only %v", tombs, want)
	}
	refused(t, h, ErrNotFound, &vbatchv1.DeleteFile{Id: "file-2", KeepPosition: true})

	// The same id created and deleted again: the newer tombstone replaces
	// the first and is pruned on its own time.
	h.Advance(time.Hour)
	h.MustApply(t, inputFile("file-2", 1))
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-2", KeepPosition: true})
	again := h.Clock.Unix()

	h.Clock = time.Unix(deleted, 0).Add(FileTombstoneTTL - time.Second)
	h.MustApply(t, inputFile("file-3", 1))
	h.Advance(time.Second) // the first delete is a day old
	refused(t, h, ErrNotFound, &vbatchv1.DeleteFile{Id: "nope"})
	h.MustApply(t, inputFile("file-4", 1))
	if got := h.State().FileTombstones["file-2"]; got.GetDeletedAt() != again {
		t.Fatalf("after the first delete's day: tombstone %v, want the second delete's", got)
	}
	h.Clock = time.Unix(again, 0).Add(FileTombstoneTTL)
	if len(h.State().FileTombstones) != 1 {
		t.Fatal("moving the clock alone pruned")
	}
	refused(t, h, ErrNotFound, &vbatchv1.DeleteFile{Id: "nope"})
	if len(h.State().FileTombstones) != 1 {
		t.Fatal("a refused command pruned")
	}
	h.MustApply(t, inputFile("file-5", 1))
	if tombs := h.State().FileTombstones; len(tombs) != 0 {
		t.Fatalf("tombstones a day old kept: %v", tombs)
	}
}

// TestPruneTombstonesWithoutIndex: a state built without the FSM's index
// (a clone) prunes the same tombstones by scanning them.
func TestPruneTombstonesWithoutIndex(t *testing.T) {
	s := NewState()
	day := int64(FileTombstoneTTL / time.Second)
	for i, at := range []int64{100, 200, 300} {
		id := fmt.Sprintf("file-%d", i)
		s.FileTombstones[id] = &vbatchv1.FileTombstone{Id: id, Project: proj, DeletedAt: at}
	}
	indexed := s.Clone()
	indexed.reindex()
	for _, st := range []*State{s, indexed} {
		st.pruneTombstones(200 + day)
		if len(st.FileTombstones) != 1 || st.FileTombstones["file-2"] == nil {
			t.Fatalf("indexed %v: left %v, want file-2 only", st.tombsIndexed, st.FileTombstones)
		}
	}
}

func TestRegisterAgent(t *testing.T) {
	h := NewHarness()
	ag := &vbatchv1.Agent{Id: "a1", RpcAddr: "10.0.0.1:8001", Models: []string{"m"}, MaxLeases: 4,
		Gpus: []*vbatchv1.GPU{{Index: 0, Name: "H100", Uuid: "GPU-1"}}}
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: ag})
	if got := h.State().Agents["a1"]; got.RegisteredAt != h.Clock.Unix() || got.RpcAddr != ag.RpcAddr || len(got.Gpus) != 1 {
		t.Fatalf("agent = %v", got)
	}
	// Registering again replaces the record: a restarted agent is not draining.
	h.MustApply(t, &vbatchv1.DrainAgent{AgentId: "a1"})
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1", Models: []string{"m2"}}})
	if got := h.State().Agents["a1"]; got.Draining || got.Models[0] != "m2" {
		t.Fatalf("re-registered agent = %v", got)
	}
	refused(t, h, ErrInvalid, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{}})
	refused(t, h, ErrInvalid, &vbatchv1.RegisterAgent{})
}

func TestDrainAgent(t *testing.T) {
	h := running(t, 100, 50)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, &vbatchv1.DrainAgent{AgentId: "a1"})
	unchanged(t, h, &vbatchv1.DrainAgent{AgentId: "a1"})
	if !h.State().Agents["a1"].Draining {
		t.Fatal("not draining")
	}
	refused(t, h, ErrConflict, grantCmd(h, 1, "a1"))
	// The lease it holds runs on.
	h.MustApply(t, commit(0, tok, 0, 10, 10))
	refused(t, h, ErrNotFound, &vbatchv1.DrainAgent{AgentId: "ghost"})

	// Undrained, it takes leases again.
	h.MustApply(t, &vbatchv1.UndrainAgent{AgentId: "a1"})
	unchanged(t, h, &vbatchv1.UndrainAgent{AgentId: "a1"})
	if h.State().Agents["a1"].Draining {
		t.Fatal("still draining")
	}
	grant(t, h, 1, "a1")
	refused(t, h, ErrNotFound, &vbatchv1.UndrainAgent{AgentId: "ghost"})
}

func TestRemoveAgentEndsItsLeases(t *testing.T) {
	h := running(t, 100, 50)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, commit(0, tok, 0, 10, 10))
	other := grant(t, h, 1, "a2")
	h.MustApply(t, &vbatchv1.RemoveAgent{AgentId: "a1"})
	s := h.State()
	if _, ok := s.Agents["a1"]; ok {
		t.Fatal("agent still registered")
	}
	c0, c1 := s.Batches[batch].Chunks[0], s.Batches[batch].Chunks[1]
	if c0.State != chunkPending || c0.Lease != nil || c0.Progress != 10 {
		t.Fatalf("removed agent's chunk = %v", c0)
	}
	if c1.State != chunkLeased || c1.Lease.Token != other {
		t.Fatalf("other agent's chunk = %v", c1)
	}
	refused(t, h, ErrStaleToken, commit(0, tok, 10, 20, 10))
	refused(t, h, ErrNotFound, &vbatchv1.RemoveAgent{AgentId: "a1"})
}

// TestCreateFileExpiresOnFSMTime: from level 10 a create leaves created_at
// unset and gives the file's lifetime as expires_after_seconds; the file
// is created at the command's (the leader's) time and expires that long
// after, whatever expires_at the proposer's clock put in. A retry at a
// later time is the same create; another lifetime is not.
func TestCreateFileExpiresOnFSMTime(t *testing.T) {
	h := NewHarness()
	cmd := inputFile("file-1", 3)
	cmd.File.ExpiresAt = h.Clock.Add(-10 * time.Minute).Unix() // a proposer ten minutes behind, ignored
	cmd.ExpiresAfterSeconds = 3600
	h.MustApply(t, cmd)
	f := h.State().Files["file-1"]
	if f.CreatedAt != h.Clock.Unix() || f.ExpiresAt != h.Clock.Unix()+3600 {
		t.Fatalf("created_at %d, expires_at %d; want %d and %d", f.CreatedAt, f.ExpiresAt, h.Clock.Unix(), h.Clock.Unix()+3600)
	}
	h.Advance(time.Minute)
	unchanged(t, h, cmd)
	other := proto.Clone(cmd).(*vbatchv1.CreateFile)
	other.ExpiresAfterSeconds = 7200
	refused(t, h, ErrExists, other)
	negative := inputFile("file-2", 1)
	negative.ExpiresAfterSeconds = -1
	refused(t, h, ErrInvalid, negative)
}

func TestSetServerIncarnation(t *testing.T) {
	h := running(t, 100, 50)
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c1", Incarnation: "i1"})
	unchanged(t, h, &vbatchv1.SetServerIncarnation{NodeId: "c1", Incarnation: "i1"})
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c2", Incarnation: "i2"})
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c1", Incarnation: "i3"})
	if got := h.State().Incarnations; len(got) != 2 || got["c1"] != "i3" || got["c2"] != "i2" {
		t.Fatalf("incarnations = %v", got)
	}
	// An empty incarnation forgets the server; forgetting twice is fine.
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c1"})
	unchanged(t, h, &vbatchv1.SetServerIncarnation{NodeId: "c1"})
	if got := h.State().Incarnations; len(got) != 1 || got["c2"] != "i2" {
		t.Fatalf("incarnations after forgetting c1 = %v", got)
	}
	refused(t, h, ErrInvalid, &vbatchv1.SetServerIncarnation{Incarnation: "i4"})
}
