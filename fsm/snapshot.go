package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// SnapshotVersion is the snapshot stream format this build writes.
const SnapshotVersion = 1

// maxRecord bounds one snapshot record (a batch with all its chunks).
const maxRecord = 256 << 20

// snapshot is a point-in-time copy of the state, written to raft's sink as
// a stream of length-prefixed SnapshotRecords: a header, then keys, files,
// batches and agents in id order (so equal states give equal bytes).
type snapshot struct {
	state   *State
	applied uint64
}

// Persist writes the snapshot to sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.state, s.applied); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm snapshot: %w", err)
	}
	return sink.Close()
}

// Release is a no-op: the snapshot owns its copy.
func (s *snapshot) Release() {}

// WriteSnapshot streams st to w.
func WriteSnapshot(w io.Writer, st *State, applied uint64) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var lenBuf [binary.MaxVarintLen64]byte
	write := func(rec *vbatchv1.SnapshotRecord) error {
		b, err := proto.Marshal(rec)
		if err != nil {
			return err
		}
		n := binary.PutUvarint(lenBuf[:], uint64(len(b)))
		if _, err := bw.Write(lenBuf[:n]); err != nil {
			return err
		}
		_, err = bw.Write(b)
		return err
	}
	if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Header{Header: &vbatchv1.SnapshotHeader{
		Version: SnapshotVersion, NowUnixMs: st.Now, AppliedIndex: applied,
	}}}); err != nil {
		return err
	}
	for _, id := range sortedKeys(st.APIKeys) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_ApiKey{ApiKey: st.APIKeys[id]}}); err != nil {
			return err
		}
	}
	for _, id := range sortedKeys(st.Files) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_File{File: st.Files[id]}}); err != nil {
			return err
		}
	}
	for _, id := range sortedKeys(st.Batches) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Batch{Batch: st.Batches[id]}}); err != nil {
			return err
		}
	}
	for _, id := range sortedKeys(st.Agents) {
		if err := write(&vbatchv1.SnapshotRecord{Record: &vbatchv1.SnapshotRecord_Agent{Agent: st.Agents[id]}}); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// ReadSnapshot builds a fresh state from a snapshot stream, returning it
// and the raft index it includes.
func ReadSnapshot(r io.Reader) (*State, uint64, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	st := NewState()
	var applied uint64
	first := true
	for {
		n, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) && !first {
			return st, applied, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read record length: %w", err)
		}
		if n > maxRecord {
			return nil, 0, fmt.Errorf("record of %d bytes exceeds %d", n, maxRecord)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, 0, fmt.Errorf("read record: %w", err)
		}
		rec := &vbatchv1.SnapshotRecord{}
		if err := proto.Unmarshal(buf, rec); err != nil {
			return nil, 0, fmt.Errorf("decode record: %w", err)
		}
		if first {
			h := rec.GetHeader()
			if h == nil {
				return nil, 0, errors.New("snapshot does not start with a header")
			}
			if h.Version != SnapshotVersion {
				return nil, 0, fmt.Errorf("snapshot version %d: this build reads %d", h.Version, SnapshotVersion)
			}
			st.Now, applied, first = h.NowUnixMs, h.AppliedIndex, false
			continue
		}
		switch v := rec.Record.(type) {
		case *vbatchv1.SnapshotRecord_ApiKey:
			st.APIKeys[v.ApiKey.Id] = v.ApiKey
		case *vbatchv1.SnapshotRecord_File:
			st.Files[v.File.Id] = v.File
		case *vbatchv1.SnapshotRecord_Batch:
			st.Batches[v.Batch.Id] = v.Batch
		case *vbatchv1.SnapshotRecord_Agent:
			st.Agents[v.Agent.Id] = v.Agent
		default:
			return nil, 0, fmt.Errorf("unknown snapshot record %T", rec.Record)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
