package fsm

import (
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestValidTransition(t *testing.T) {
	allowed := map[[2]vbatchv1.BatchStatus]bool{
		{statusValidating, statusInProgress}: true,
		{statusValidating, statusFailed}:     true,
		{statusValidating, statusCancelled}:  true,
		{statusValidating, statusExpired}:    true,
		{statusInProgress, statusFinalizing}: true,
		{statusInProgress, statusCancelling}: true,
		{statusInProgress, statusExpired}:    true,
		{statusFinalizing, statusCompleted}:  true,
		{statusFinalizing, statusExpired}:    true,
		{statusCancelling, statusCancelled}:  true,
		{statusCancelling, statusExpired}:    true,
	}
	for from := range vbatchv1.BatchStatus_name {
		for to := range vbatchv1.BatchStatus_name {
			f, tt := vbatchv1.BatchStatus(from), vbatchv1.BatchStatus(to)
			got := ValidTransition(f, tt)
			if got != allowed[[2]vbatchv1.BatchStatus{f, tt}] {
				t.Errorf("ValidTransition(%s, %s) = %v", f, tt, got)
			}
			if got && tt <= f {
				t.Errorf("%s -> %s moves backwards", f, tt)
			}
			if got && IsTerminal(f) {
				t.Errorf("%s -> %s leaves a terminal status", f, tt)
			}
		}
	}
}

func TestIsTerminal(t *testing.T) {
	for n := range vbatchv1.BatchStatus_name {
		s := vbatchv1.BatchStatus(n)
		want := s >= statusCompleted
		if IsTerminal(s) != want {
			t.Errorf("IsTerminal(%s) = %v", s, !want)
		}
	}
}

func TestLiveLease(t *testing.T) {
	c := &vbatchv1.Chunk{State: chunkLeased, Lease: &vbatchv1.Lease{Token: 1, ExpiresAt: 1000}}
	if !LiveLease(c, 999) || LiveLease(c, 1000) {
		t.Fatal("a lease is live strictly before its expiry")
	}
	c.State = chunkDone
	if LiveLease(c, 0) {
		t.Fatal("a done chunk's finished lease is not live")
	}
	if LiveLease(&vbatchv1.Chunk{State: chunkPending}, 0) {
		t.Fatal("a pending chunk has no lease")
	}
}

func TestUsedByLiveBatch(t *testing.T) {
	s := NewState()
	s.Batches["b"] = &vbatchv1.Batch{Id: "b", Status: statusInProgress, InputFileId: "in", OutputFileId: "out", ErrorFileId: "err"}
	s.Batches["done"] = &vbatchv1.Batch{Id: "done", Status: statusCompleted, InputFileId: "old"}
	for id, want := range map[string]bool{"in": true, "out": true, "err": true, "old": false, "other": false} {
		if UsedByLiveBatch(s, id) != want {
			t.Errorf("UsedByLiveBatch(%s) = %v", id, !want)
		}
	}
}

func TestReferencedBlobs(t *testing.T) {
	s := NewState()
	s.Files["f"] = &vbatchv1.File{Id: "f", Parts: []*vbatchv1.BlobRef{blob("a", 1), blob("b", 1)}}
	s.Batches["b"] = &vbatchv1.Batch{Id: "b", Chunks: []*vbatchv1.Chunk{{Parts: []*vbatchv1.Part{
		{Output: blob("c", 1), Errors: blob("d", 1)}, {Output: blob("", 0)},
	}}}}
	// A finished batch's parts are referenced through its result files
	// only: deleting those frees the bytes.
	s.Batches["done"] = &vbatchv1.Batch{Id: "done", Status: statusCompleted, Chunks: []*vbatchv1.Chunk{{Parts: []*vbatchv1.Part{
		{Output: blob("e", 1)}, {Output: blob("gone", 1)},
	}}}}
	s.Files["out"] = &vbatchv1.File{Id: "out", BatchId: "done", Parts: []*vbatchv1.BlobRef{blob("e", 1)}}
	got := ReferencedBlobs(s)
	if len(got) != 5 {
		t.Fatalf("refs = %v", got)
	}
	for _, sha := range []string{"a", "b", "c", "d", "e"} {
		if _, ok := got[sha]; !ok {
			t.Fatalf("blob %s not referenced: %v", sha, got)
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	h := running(t, 10, 5)
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "k", Project: proj, Hash: []byte{1}}})
	var orig *State
	h.FSM.View(func(s *State) { orig = s })
	c := orig.Clone()
	if !c.Equal(orig) || c.Now != orig.Now {
		t.Fatal("clone differs")
	}
	c.Batches[batch].Chunks[0].Progress = 99
	c.Files["file-in"].Parts[0].Bytes = 99
	c.Agents["a1"].Draining = true
	c.APIKeys["k"].RevokedAt = 9
	if orig.Batches[batch].Chunks[0].Progress == 99 || orig.Files["file-in"].Parts[0].Bytes == 99 ||
		orig.Agents["a1"].Draining || orig.APIKeys["k"].RevokedAt == 9 {
		t.Fatal("clone shares records with the original")
	}
	if c.Equal(orig) {
		t.Fatal("Equal missed a changed record")
	}

	// Incarnations are copied and compared too.
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c1", Incarnation: "i1"})
	h.FSM.View(func(s *State) { orig = s })
	c = orig.Clone()
	if !c.Equal(orig) {
		t.Fatal("clone of incarnations differs")
	}
	c.Incarnations["c1"] = "i2"
	if orig.Incarnations["c1"] != "i1" || c.Equal(orig) {
		t.Fatal("clone shares incarnations, or Equal missed a changed one")
	}

	// Tombstones are copied and compared too.
	h.MustApply(t, inputFile("file-2", 1))
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-2", KeepPosition: true})
	h.FSM.View(func(s *State) { orig = s })
	c = orig.Clone()
	if !c.Equal(orig) || len(c.FileTombstones) != 1 {
		t.Fatal("clone of tombstones differs")
	}
	c.FileTombstones["file-2"].CreatedAt = 9
	if orig.FileTombstones["file-2"].CreatedAt == 9 {
		t.Fatal("clone shares tombstones with the original")
	}
	if c.Equal(orig) {
		t.Fatal("Equal missed a changed tombstone")
	}
	delete(c.FileTombstones, "file-2")
	if c.Equal(orig) {
		t.Fatal("Equal missed a missing tombstone")
	}
}
