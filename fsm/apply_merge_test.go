package fsm

import (
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestMergeFileParts(t *testing.T) {
	h := NewHarness()
	parts := []*vbatchv1.BlobRef{blob("p1", 10), blob("p2", 20), blob("p3", 5)}
	h.MustApply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "file-out", Project: "p", Purpose: "batch_output", Bytes: 35, Lines: 3, Parts: parts}})
	h.MustApply(t, inputFile("file-in", 10))
	merged := blob("m", 35)
	merge := &vbatchv1.MergeFileParts{FileId: "file-out", Parts: parts, Merged: merged}

	refused(t, h, ErrNotFound, &vbatchv1.MergeFileParts{FileId: "file-none", Parts: parts, Merged: merged})
	refused(t, h, ErrConflict, &vbatchv1.MergeFileParts{FileId: "file-out", Parts: parts[1:], Merged: blob("m", 25)})
	refused(t, h, ErrConflict, &vbatchv1.MergeFileParts{FileId: "file-out", Parts: []*vbatchv1.BlobRef{parts[0], parts[2], parts[1]}, Merged: merged})
	refused(t, h, ErrInvalid, &vbatchv1.MergeFileParts{FileId: "file-out", Parts: parts, Merged: blob("m", 34)})
	refused(t, h, ErrInvalid, &vbatchv1.MergeFileParts{FileId: "file-out", Parts: parts})
	refused(t, h, ErrConflict, &vbatchv1.MergeFileParts{FileId: "file-in", Parts: h.State().Files["file-in"].Parts, Merged: blob("m", 10)})

	before := h.State().Files["file-out"]
	var stored *vbatchv1.File // the FSM's own record, as a list keeps it
	h.FSM.View(func(s *State) { stored = s.Files["file-out"] })
	h.MustApply(t, merge)
	if len(stored.Parts) != 3 {
		t.Fatalf("the merge changed the stored record in place: %v", stored)
	}
	after := h.State().Files["file-out"]
	if len(after.Parts) != 1 || after.Parts[0].Sha256 != "m" || after.Bytes != 35 || after.Lines != before.Lines || after.Filename != before.Filename {
		t.Fatalf("merged file = %v, was %v", after, before)
	}
	unchanged(t, h, merge) // applied again
	refs := ReferencedBlobs(h.State())
	for _, p := range parts {
		if _, ok := refs[p.Sha256]; ok {
			t.Errorf("part %s still referenced after the merge", p.Sha256)
		}
	}
	if _, ok := refs["m"]; !ok {
		t.Error("merged blob not referenced")
	}
}
