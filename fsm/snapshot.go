package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// A snapshot is a stream of SnapshotRecord messages, each preceded by its
// length as a uvarint: a header, then API keys, files, batches and agents,
// each kind in id order so the same state always writes the same bytes,
// then file tombstones (FSM level 9; none is written while there are none,
// so a state without them stays readable by older builds).

// SnapshotVersion is the snapshot encoding this build writes and reads.
const SnapshotVersion = 1

// maxRecord bounds one record, so a corrupt length cannot make Restore
// allocate without limit.
const maxRecord = 1 << 30

// snapshot is a point-in-time copy of the state, written by Persist
// without holding the FSM's lock.
type snapshot struct {
	state   *State
	applied uint64
}

// Persist writes the snapshot to the sink and closes it, or cancels the
// sink on error.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriter(sink)
	err := WriteSnapshot(w, s.state, s.applied)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		if cerr := sink.Cancel(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cancel sink: %w", cerr))
		}
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("close snapshot sink: %w", err)
	}
	return nil
}

// Release does nothing: the snapshot holds only its own copy.
func (s *snapshot) Release() {}

// WriteSnapshot writes s as a snapshot stream taken at raft index applied.
func WriteSnapshot(w io.Writer, s *State, applied uint64) error {
	var buf, size []byte
	opts := proto.MarshalOptions{Deterministic: true}
	write := func(r *vbatchv1.SnapshotRecord) error {
		var err error
		if buf, err = opts.MarshalAppend(buf[:0], r); err != nil {
			return fmt.Errorf("encode snapshot record: %w", err)
		}
		size = binary.AppendUvarint(size[:0], uint64(len(buf)))
		if _, err := w.Write(size); err != nil {
			return fmt.Errorf("write snapshot: %w", err)
		}
		if _, err := w.Write(buf); err != nil {
			return fmt.Errorf("write snapshot: %w", err)
		}
		return nil
	}
	hdr := &vbatchv1.SnapshotHeader{Version: SnapshotVersion, NowUnixMs: s.Now, AppliedIndex: applied}
	if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Header{Header: hdr}}); err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(s.APIKeys)) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_ApiKey{ApiKey: s.APIKeys[id]}}); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.Files)) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_File{File: s.Files[id]}}); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.Batches)) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Batch{Batch: s.Batches[id]}}); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.Agents)) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Agent{Agent: s.Agents[id]}}); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.FileTombstones)) {
		rec := &vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_FileTombstone{FileTombstone: s.FileTombstones[id]}}
		if err := write(rec); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.Incarnations)) {
		inc := &vbatchv1.ServerIncarnation{NodeId: id, Incarnation: s.Incarnations[id]}
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_ServerIncarnation{ServerIncarnation: inc}}); err != nil {
			return err
		}
	}
	return nil
}

// ReadSnapshot reads a snapshot stream into a fresh State and returns it
// with the stream's header.
func ReadSnapshot(r io.Reader) (*State, *vbatchv1.SnapshotHeader, error) {
	br := bufio.NewReader(r)
	s := NewState()
	var hdr *vbatchv1.SnapshotHeader
	var buf []byte
	for n := 0; ; n++ {
		size, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("snapshot record %d: read length: %w", n, err)
		}
		if size > maxRecord {
			return nil, nil, fmt.Errorf("snapshot record %d: length %d exceeds %d", n, size, maxRecord)
		}
		buf = slices.Grow(buf[:0], int(size))[:size]
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, nil, fmt.Errorf("snapshot record %d: %w", n, err)
		}
		rec := &vbatchv1.SnapshotRecord{}
		if err := proto.Unmarshal(buf, rec); err != nil {
			return nil, nil, fmt.Errorf("snapshot record %d: %w", n, err)
		}
		if n == 0 {
			if hdr = rec.GetHeader(); hdr == nil {
				return nil, nil, errors.New("snapshot does not start with a header")
			}
			if hdr.Version != SnapshotVersion {
				return nil, nil, fmt.Errorf("snapshot version %d: this build reads version %d", hdr.Version, SnapshotVersion)
			}
			s.Now = hdr.NowUnixMs
			continue
		}
		if err := s.add(rec); err != nil {
			return nil, nil, fmt.Errorf("snapshot record %d: %w", n, err)
		}
	}
	if hdr == nil {
		return nil, nil, errors.New("empty snapshot")
	}
	return s, hdr, nil
}

// add stores one snapshot record in s.
func (s *State) add(rec *vbatchv1.SnapshotRecord) error {
	switch r := rec.Record.(type) {
	case *vbatchv1.SnapshotRecord_ApiKey:
		if err := checkID("api key", r.ApiKey.GetId(), s.APIKeys); err != nil {
			return err
		}
		s.APIKeys[r.ApiKey.GetId()] = r.ApiKey
	case *vbatchv1.SnapshotRecord_File:
		if err := checkID("file", r.File.GetId(), s.Files); err != nil {
			return err
		}
		s.Files[r.File.GetId()] = r.File
	case *vbatchv1.SnapshotRecord_Batch:
		if err := checkID("batch", r.Batch.GetId(), s.Batches); err != nil {
			return err
		}
		if err := checkBatch(r.Batch); err != nil {
			return err
		}
		s.Batches[r.Batch.GetId()] = r.Batch
	case *vbatchv1.SnapshotRecord_Agent:
		if err := checkID("agent", r.Agent.GetId(), s.Agents); err != nil {
			return err
		}
		s.Agents[r.Agent.GetId()] = r.Agent
	case *vbatchv1.SnapshotRecord_FileTombstone:
		if err := checkID("file tombstone", r.FileTombstone.GetId(), s.FileTombstones); err != nil {
			return err
		}
		if r.FileTombstone.Project == "" {
			return fmt.Errorf("file tombstone %s has no project", r.FileTombstone.Id)
		}
		s.FileTombstones[r.FileTombstone.Id] = r.FileTombstone
	case *vbatchv1.SnapshotRecord_ServerIncarnation:
		inc := r.ServerIncarnation
		if err := checkID("server incarnation", inc.GetNodeId(), s.Incarnations); err != nil {
			return err
		}
		if inc.Incarnation == "" {
			return fmt.Errorf("server incarnation of %s is empty", inc.NodeId)
		}
		s.Incarnations[inc.NodeId] = inc.Incarnation
	case *vbatchv1.SnapshotRecord_Header:
		return errors.New("a second header")
	default:
		// A record kind from a newer version: restoring without it would
		// silently lose state.
		return errors.New("unknown record kind (written by a newer vbatch?)")
	}
	return nil
}

// checkID refuses a record without an id or with one already read: a
// snapshot can come from an operator's file (snapshot restore), and what
// it holds must be what the commands could have built.
func checkID[T any](kind, id string, seen map[string]T) error {
	if id == "" {
		return fmt.Errorf("%s record without an id", kind)
	}
	if _, dup := seen[id]; dup {
		return fmt.Errorf("%s %s appears twice", kind, id)
	}
	return nil
}

// checkBatch refuses a batch the commands could not have built, which
// would otherwise break them after a restore: counts and usage present,
// chunks numbered in order over ordered line ranges, leases naming an
// agent, parts present.
func checkBatch(b *vbatchv1.Batch) error {
	if b.RequestCounts == nil {
		return fmt.Errorf("batch %s has no request counts", b.Id)
	}
	if b.Usage == nil {
		b.Usage = &vbatchv1.Usage{}
	}
	for i, ch := range b.Chunks {
		switch {
		case ch == nil:
			return fmt.Errorf("batch %s chunk %d is empty", b.Id, i)
		case ch.Index != uint32(i):
			return fmt.Errorf("batch %s chunk %d has index %d", b.Id, i, ch.Index)
		case ch.StartLine < 0 || ch.EndLine < ch.StartLine || ch.Progress < ch.StartLine || ch.Progress > ch.EndLine:
			return fmt.Errorf("batch %s chunk %d has lines [%d, %d) and progress %d", b.Id, i, ch.StartLine, ch.EndLine, ch.Progress)
		case ch.Lease != nil && ch.Lease.AgentId == "":
			return fmt.Errorf("batch %s chunk %d has a lease without an agent", b.Id, i)
		}
		for j, p := range ch.Parts {
			if p == nil {
				return fmt.Errorf("batch %s chunk %d part %d is empty", b.Id, i, j)
			}
		}
	}
	return nil
}
