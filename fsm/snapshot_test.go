package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	failWrite         bool
	closed, cancelled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failWrite {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) ID() string    { return "mem" }

// richState builds a state with every kind of record: keys, agents, a
// finished batch with result files, a running one with leases and parts,
// and a deleted file's tombstone.
func richState(t *testing.T) *Harness {
	t.Helper()
	h := finalizing(t)
	h.MustApply(t, finish(statusCompleted))
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_1", Project: proj, Hash: []byte{1, 2}, Scopes: []vbatchv1.Scope{vbatchv1.Scope_SCOPE_ADMIN}}})
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_0", Project: proj, Hash: []byte{3}}})
	h.MustApply(t, inputFile("file-2", 30))
	b := newBatch(h)
	b.Batch.Id, b.Batch.InputFileId = "batch_2", "file-2"
	h.MustApply(t, b)
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: "batch_2", Model: "m", Total: 30, Chunks: chunking(30, 7)})
	tok := h.MustApply(t, &vbatchv1.GrantLease{BatchId: "batch_2", Chunk: 2, AgentId: "a2", ExpiresAt: h.expiry()})
	h.MustApply(t, &vbatchv1.CommitPart{BatchId: "batch_2", Chunk: 2, Part: &vbatchv1.Part{FromLine: 14, ToLine: 16, Token: tok, Succeeded: 2, Output: blob("o2", 9)}})
	h.MustApply(t, &vbatchv1.DrainAgent{AgentId: "a1"})
	h.MustApply(t, inputFile("file-gone", 1))
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-gone", KeepPosition: true})
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c2", Incarnation: "inc-2"})
	h.MustApply(t, &vbatchv1.SetServerIncarnation{NodeId: "c1", Incarnation: "inc-1"})
	return h
}

func snapshotBytes(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed %v cancelled %v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	h := richState(t)
	data := snapshotBytes(t, h.FSM)

	f := New()
	w := f.Watch()
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	<-w
	var got *State
	f.View(func(s *State) { got = s.Clone() })
	want := h.State()
	if !got.Equal(want) || got.Now != want.Now {
		t.Fatal("restored state differs")
	}
	if f.AppliedIndex() != h.Index {
		t.Fatalf("applied index %d, want %d", f.AppliedIndex(), h.Index)
	}
	// The same state always writes the same bytes.
	if again := snapshotBytes(t, f); !bytes.Equal(again, data) {
		t.Fatal("snapshot of the restored state differs")
	}
	// The restored FSM goes on from there like the original.
	next := &vbatchv1.RenewLease{BatchId: "batch_2", Chunk: 2, Token: h.State().Batches["batch_2"].Chunks[2].Lease.Token, ExpiresAt: h.expiry() + 1}
	r1 := MustApply(t, h.FSM, h.Index+1, h.Clock, next)
	r2 := MustApply(t, f, h.Index+1, h.Clock, next)
	f.View(func(s *State) { got = s.Clone() })
	if !proto.Equal(r1, r2) || r1.Code != "" || !got.Equal(h.State()) {
		t.Fatalf("restored FSM diverged: %v vs %v", r1, r2)
	}
}

func TestSnapshotStreamLayout(t *testing.T) {
	h := richState(t)
	data := snapshotBytes(t, h.FSM)
	r := bytes.NewReader(data)
	var kinds, ids []string
	for r.Len() > 0 {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
		rec := &vbatchv1.SnapshotRecord{}
		if err := proto.Unmarshal(buf, rec); err != nil {
			t.Fatal(err)
		}
		switch x := rec.Record.(type) {
		case *vbatchv1.SnapshotRecord_Header:
			kinds, ids = append(kinds, "header"), append(ids, "")
		case *vbatchv1.SnapshotRecord_ApiKey:
			kinds, ids = append(kinds, "key"), append(ids, x.ApiKey.Id)
		case *vbatchv1.SnapshotRecord_File:
			kinds, ids = append(kinds, "file"), append(ids, x.File.Id)
		case *vbatchv1.SnapshotRecord_Batch:
			kinds, ids = append(kinds, "batch"), append(ids, x.Batch.Id)
		case *vbatchv1.SnapshotRecord_Agent:
			kinds, ids = append(kinds, "agent"), append(ids, x.Agent.Id)
		case *vbatchv1.SnapshotRecord_FileTombstone:
			kinds, ids = append(kinds, "tombstone"), append(ids, x.FileTombstone.Id)
		case *vbatchv1.SnapshotRecord_ServerIncarnation:
			kinds, ids = append(kinds, "incarnation"), append(ids, x.ServerIncarnation.NodeId)
		}
	}
	want := "header key key file file file file batch batch agent agent tombstone incarnation incarnation"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("record kinds %q, want %q", got, want)
	}
	wantIDs := " key_0 key_1 file-2 file-err file-in file-out batch_1 batch_2 a1 a2 file-gone c1 c2"
	if got := strings.Join(ids, " "); got != wantIDs {
		t.Fatalf("record ids %q, want %q", got, wantIDs)
	}
}

// TestRestoredTombstonesArePruned: a restored FSM rebuilds the deletion
// order of its tombstones and prunes them when the original does.
func TestRestoredTombstonesArePruned(t *testing.T) {
	h := richState(t)
	h.Advance(time.Hour)
	h.MustApply(t, inputFile("file-late", 1))
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-late", KeepPosition: true})
	f := New()
	if err := f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.FSM)))); err != nil {
		t.Fatal(err)
	}
	f.View(func(s *State) {
		if !s.tombsIndexed || len(s.tombs) != 2 || s.tombs[0].Id != "file-gone" {
			t.Fatalf("restored deletion order %v (indexed %v)", s.tombs, s.tombsIndexed)
		}
	})
	h.Advance(FileTombstoneTTL - time.Hour) // file-gone's day is over, not file-late's
	next := &vbatchv1.DrainAgent{AgentId: "a2"}
	MustApply(t, f, h.Index+1, h.Clock, next)
	h.MustApply(t, next)
	var got *State
	f.View(func(s *State) { got = s.Clone() })
	if tombs := got.FileTombstones; len(tombs) != 1 || tombs["file-late"] == nil || !got.Equal(h.State()) {
		t.Fatalf("restored FSM kept tombstones %v; the original %v", tombs, h.State().FileTombstones)
	}
}

func TestSnapshotIsAPointInTimeCopy(t *testing.T) {
	h := richState(t)
	want := h.State()
	snap, err := h.FSM.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	h.MustApply(t, &vbatchv1.RemoveAgent{AgentId: "a2"}) // after the snapshot, before Persist
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	got, hdr, err := ReadSnapshot(&sink.Buffer)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) || hdr.AppliedIndex != h.Index-1 {
		t.Fatal("snapshot saw a later command")
	}
}

func TestPersistCancelsTheSinkOnError(t *testing.T) {
	h := richState(t)
	snap, _ := h.FSM.Snapshot()
	sink := &memSink{failWrite: true}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("persist to a failing sink succeeded")
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("sink closed %v cancelled %v", sink.closed, sink.cancelled)
	}
}

func frame(t *testing.T, recs ...*vbatchv1.SnapshotRecord) []byte {
	t.Helper()
	var out []byte
	for _, r := range recs {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(binary.AppendUvarint(out, uint64(len(b))), b...)
	}
	return out
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	good := snapshotBytes(t, richState(t).FSM)
	header := func(v uint32) *vbatchv1.SnapshotRecord {
		return &vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Header{Header: &vbatchv1.SnapshotHeader{Version: v}}}
	}
	agent := &vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Agent{Agent: &vbatchv1.Agent{Id: "a"}}}
	incarnation := &vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_ServerIncarnation{
		ServerIncarnation: &vbatchv1.ServerIncarnation{NodeId: "c1", Incarnation: "i"}}}
	cases := map[string][]byte{
		"empty":          nil,
		"truncated":      good[:len(good)-3],
		"cut after size": good[:1],
		"no header":      frame(t, agent),
		"newer version":  frame(t, header(2), agent),
		"two headers":    frame(t, header(1), header(1)),
		"unknown kind":   frame(t, header(1), &vbatchv1.SnapshotRecord{}),
		"tombstone without a project": frame(t, header(1), &vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_FileTombstone{
			FileTombstone: &vbatchv1.FileTombstone{Id: "file-1"}}}),
		"empty incarnation": frame(t, header(1), &vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_ServerIncarnation{
			ServerIncarnation: &vbatchv1.ServerIncarnation{NodeId: "c1"}}}),
		"incarnation twice": frame(t, header(1), incarnation, incarnation),
		"garbage record":    append(binary.AppendUvarint(frame(t, header(1)), 2), 0xff, 0xff),
		"huge length":       binary.AppendUvarint(frame(t, header(1)), 1<<40),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			h := richState(t)
			before := h.State()
			if err := h.FSM.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
				t.Fatal("restored")
			}
			if !before.Equal(h.State()) || h.FSM.AppliedIndex() != h.Index {
				t.Fatal("a failed restore changed the state")
			}
		})
	}
	if _, _, err := ReadSnapshot(bytes.NewReader(frame(t, header(1), agent))); err != nil {
		t.Fatalf("minimal snapshot: %v", err)
	}
}

var _ raft.SnapshotSink = (*memSink)(nil)
