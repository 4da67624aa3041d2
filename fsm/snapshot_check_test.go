package fsm

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestReadSnapshotRefusesImpossibleRecords: a snapshot given to restore
// may be crafted; records the commands could not have built are refused
// instead of breaking every coordinator that applies a later command.
func TestReadSnapshotRefusesImpossibleRecords(t *testing.T) {
	good := func() *vbatchv1.Batch {
		return &vbatchv1.Batch{Id: "b1", RequestCounts: &vbatchv1.RequestCounts{}, Chunks: []*vbatchv1.Chunk{
			{Index: 0, StartLine: 0, EndLine: 10, Progress: 0},
			{Index: 1, StartLine: 10, EndLine: 20, Progress: 15, Lease: &vbatchv1.Lease{AgentId: "a1", Token: 7}},
		}}
	}
	cases := map[string]func(*vbatchv1.Batch){
		"no request counts": func(b *vbatchv1.Batch) { b.RequestCounts = nil },
		"chunk index":       func(b *vbatchv1.Batch) { b.Chunks[1].Index = 5 },
		"nil chunk":         func(b *vbatchv1.Batch) { b.Chunks[1] = nil },
		"progress":          func(b *vbatchv1.Batch) { b.Chunks[0].Progress = 11 },
		"lines":             func(b *vbatchv1.Batch) { b.Chunks[0].EndLine = -1 },
		"lease":             func(b *vbatchv1.Batch) { b.Chunks[1].Lease.AgentId = "" },
		"no id":             func(b *vbatchv1.Batch) { b.Id = "" },
	}
	write := func(s *State) []byte {
		var buf bytes.Buffer
		if err := WriteSnapshot(&buf, s, 1); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	s := NewState()
	s.Batches["b1"] = good()
	if _, _, err := ReadSnapshot(bytes.NewReader(write(s))); err != nil {
		t.Fatalf("valid snapshot refused: %v", err)
	}
	for name, spoil := range cases {
		b := good()
		spoil(b)
		s := NewState()
		s.Batches["x"] = b
		if _, _, err := ReadSnapshot(bytes.NewReader(write(s))); err == nil {
			t.Errorf("%s: snapshot accepted", name)
		}
	}
	// The same batch twice.
	var buf bytes.Buffer
	s = NewState()
	s.Batches["b1"] = good()
	data := write(s)
	hdrLen := headerLen(t, data)
	buf.Write(data)
	buf.Write(data[hdrLen:])
	if _, _, err := ReadSnapshot(&buf); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate batch: %v", err)
	}
}

// headerLen is the length of a snapshot's first (header) record.
func headerLen(t *testing.T, data []byte) int {
	t.Helper()
	n, k := binary.Uvarint(data)
	if k <= 0 {
		t.Fatal("bad snapshot")
	}
	return k + int(n)
}
