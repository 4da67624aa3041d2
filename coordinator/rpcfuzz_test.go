package coordinator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// These fuzz targets feed the coordinator's RPC decoders what any peer on
// the RPC port can send: agent requests, envelopes forwarded to the
// leader, and snapshots to restore. None needs a cluster: each runs the
// checks a handler makes before raft and then applies the resulting
// command to a real FSM, which no message may panic (a panicking FSM
// stops every coordinator at once) and which must refuse a command
// without changing a record.

// Fixture names: batch_f of 8 lines in two chunks of 4, chunk 0 leased to
// agent ag.
const (
	fuzzBatch = "batch_f"
	fuzzAgent = "ag"
)

// rpcFixture returns a harness whose FSM holds the fixture state and the
// fencing token of ag's lease.
func rpcFixture(t testing.TB) (*fsm.Harness, uint64) {
	h := fsm.NewHarness()
	now := h.Clock.Unix()
	for _, cmd := range []proto.Message{
		&vbatchv1.CreateFile{File: &vbatchv1.File{Id: "file-in", Project: "p", Purpose: "batch", Bytes: 800, Lines: 8,
			Parts: []*vbatchv1.BlobRef{{Sha256: hex.EncodeToString(make([]byte, 32)), Bytes: 800}}}},
		&vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: fuzzBatch, Project: "p", InputFileId: "file-in",
			Endpoint: "/v1/chat/completions", CompletionWindow: "24h", ExpiresAt: now + 86400}},
		&vbatchv1.StartBatch{BatchId: fuzzBatch, Model: "m", Total: 8, Chunks: []*vbatchv1.Chunk{
			{Index: 0, StartLine: 0, EndLine: 4, StartOffset: 0, EndOffset: 400},
			{Index: 1, StartLine: 4, EndLine: 8, StartOffset: 400, EndOffset: 800}}},
		&vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: fuzzAgent, Models: []string{"m"}}},
		&vbatchv1.GrantLease{BatchId: fuzzBatch, Chunk: 0, AgentId: fuzzAgent, ExpiresAt: h.Clock.Add(30 * time.Second).UnixMilli()},
	} {
		h.MustApply(t, cmd)
	}
	return h, h.Index
}

// agentRequests are the request messages of AgentService, by the kind
// byte of FuzzAgentRPC.
var agentRequests = []func() proto.Message{
	func() proto.Message { return &vbatchv1.RegisterRequest{} },
	func() proto.Message { return &vbatchv1.LeaseRequest{} },
	func() proto.Message { return &vbatchv1.RenewRequest{} },
	func() proto.Message { return &vbatchv1.ReadInputRequest{} },
	func() proto.Message { return &vbatchv1.PutResultsRequest{} },
	func() proto.Message { return &vbatchv1.CompleteRequest{} },
	func() proto.Message { return &vbatchv1.ReleaseRequest{} },
	func() proto.Message { return &vbatchv1.TelemetryRequest{} },
}

// errRefused is a request a handler turns away before raft.
var errRefused = errors.New("refused before raft")

// blobRef is the reference the blob store gives data, as storePart does;
// nil for no bytes.
func blobRef(data []byte) *vbatchv1.BlobRef {
	if len(data) == 0 {
		return nil
	}
	sum := sha256.Sum256(data)
	return &vbatchv1.BlobRef{Sha256: hex.EncodeToString(sum[:]), Bytes: int64(len(data))}
}

// agentCommands does what the agentService handler of msg does before
// raft, calling the handler's own checks (candidates, checkLease, store),
// and returns the commands it would propose; errRefused when it answers
// without proposing any.
func agentCommands(s *agentService, now time.Time, msg proto.Message) ([]proto.Message, error) {
	expires := now.Add(30 * time.Second).UnixMilli()
	switch m := msg.(type) {
	case *vbatchv1.RegisterRequest:
		a := m.GetAgent()
		if a == nil || a.Id == "" {
			return nil, errRefused
		}
		a = proto.Clone(a).(*vbatchv1.Agent)
		a.RegisteredAt = now.Unix()
		return []proto.Message{&vbatchv1.RegisterAgent{Agent: a}}, nil
	case *vbatchv1.LeaseRequest:
		cands, registered := s.candidates(m.AgentId, m.Models)
		if !registered {
			return nil, errRefused
		}
		var out []proto.Message
		for _, c := range cands {
			out = append(out, &vbatchv1.GrantLease{BatchId: c.batch.Id, Chunk: c.chunk.Index, AgentId: m.AgentId, ExpiresAt: expires})
		}
		return out, nil
	case *vbatchv1.RenewRequest:
		if s.doneUnder(m.BatchId, m.Chunk, m.Token) {
			return nil, errRefused
		}
		return []proto.Message{&vbatchv1.RenewLease{BatchId: m.BatchId, Chunk: m.Chunk, Token: m.Token, ExpiresAt: expires}}, nil
	case *vbatchv1.ReadInputRequest:
		// ReadInput proposes nothing; its guard is the lease check.
		if err := s.checkLease(m.BatchId, m.Chunk, m.Token); err != nil {
			return nil, errRefused
		}
		return nil, nil
	case *vbatchv1.PutResultsRequest:
		if _, ok := s.committedPart(m); ok {
			return nil, errRefused
		}
		if err := s.checkLease(m.BatchId, m.Chunk, m.Token); err != nil {
			return nil, errRefused
		}
		part := &vbatchv1.Part{FromLine: m.FromLine, ToLine: m.ToLine, Succeeded: m.Succeeded, Failed: m.Failed, Token: m.Token,
			Output: blobRef(m.Output), Errors: blobRef(m.Errors)}
		commit := &vbatchv1.CommitPart{BatchId: m.BatchId, Chunk: m.Chunk, Part: part, Usage: m.Usage}
		if m.Complete { // as on a cluster whose servers all apply CompletePart
			return []proto.Message{&vbatchv1.CompletePart{Commit: commit}}, nil
		}
		return []proto.Message{commit}, nil
	case *vbatchv1.CompleteRequest:
		return []proto.Message{&vbatchv1.CompleteChunk{BatchId: m.BatchId, Chunk: m.Chunk, Token: m.Token}}, nil
	case *vbatchv1.ReleaseRequest:
		return []proto.Message{releaseCommand(m, true)}, nil
	case *vbatchv1.TelemetryRequest:
		if m.AgentId == "" {
			return nil, errRefused
		}
		s.store(m, now)
		return nil, nil
	}
	panic("unknown agent request " + string(msg.ProtoReflect().Descriptor().FullName()))
}

// applyChecked applies cmd and asserts the FSM's contract: a refusal
// changes no record, and whatever state results survives a snapshot round
// trip.
func applyChecked(t *testing.T, h *fsm.Harness, cmd proto.Message) error {
	t.Helper()
	before := h.State()
	err := h.Apply(t, cmd)
	after := h.State()
	if err != nil && !after.Equal(before) {
		t.Fatalf("%T refused (%v) but changed the state", cmd, err)
	}
	checkSnapshotRoundTrip(t, after, h.Index)
	return err
}

func checkSnapshotRoundTrip(t *testing.T, st *fsm.State, index uint64) {
	t.Helper()
	var buf bytes.Buffer
	if err := fsm.WriteSnapshot(&buf, st, index); err != nil {
		t.Fatalf("write snapshot: %v", err)
	}
	got, hdr, err := fsm.ReadSnapshot(&buf)
	if err != nil || hdr.AppliedIndex != index || !got.Equal(st) || got.Now != st.Now {
		t.Fatalf("snapshot round trip: %v (header %v)", err, hdr)
	}
}

// FuzzAgentRPC decodes bytes as one AgentService request (kind picks
// which), runs the handler's checks and applies what it would propose.
// Beyond the FSM's contract, the fencing token must hold: no part commits
// under any token but the live lease's, so every line lands once.
func FuzzAgentRPC(f *testing.F) {
	_, token := rpcFixture(f)
	seeds := []proto.Message{
		&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: "ag2", Models: []string{"m"}, RpcAddr: "127.0.0.1:1"}},
		&vbatchv1.LeaseRequest{AgentId: fuzzAgent, Models: []string{"m"}, WaitMs: 10},
		&vbatchv1.RenewRequest{BatchId: fuzzBatch, Chunk: 0, Token: token},
		&vbatchv1.ReadInputRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, FromLine: 2},
		&vbatchv1.PutResultsRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, FromLine: 0, ToLine: 3, Succeeded: 2, Failed: 1,
			Output: []byte("{\"a\":1}\n{\"b\":2}\n"), Errors: []byte("{\"e\":1}\n"), Usage: &vbatchv1.Usage{InputTokens: 5, OutputTokens: 7, TotalTokens: 12}},
		&vbatchv1.PutResultsRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, FromLine: 0, ToLine: 4, Succeeded: 4, Complete: true,
			Output: []byte("{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n{\"d\":4}\n")},
		&vbatchv1.CompleteRequest{BatchId: fuzzBatch, Chunk: 0, Token: token},
		&vbatchv1.ReleaseRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, Reason: "drain"},
		&vbatchv1.TelemetryRequest{AgentId: fuzzAgent, SentAtUnixMs: 1, XidEvents: []uint64{79}},
	}
	for i, m := range seeds {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), data)
	}
	// A stale token, a part past the chunk, a chunk out of range, and
	// engine-crash releases (alone, and with started lines past the chunk).
	for _, m := range []proto.Message{
		&vbatchv1.PutResultsRequest{BatchId: fuzzBatch, Chunk: 0, Token: token - 1, FromLine: 0, ToLine: 1, Succeeded: 1},
		&vbatchv1.PutResultsRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, FromLine: 0, ToLine: 9, Succeeded: 9},
		&vbatchv1.CompleteRequest{BatchId: fuzzBatch, Chunk: 7, Token: token},
		&vbatchv1.ReleaseRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, Reason: fsm.ReleaseEngineCrash, StartedEnd: 99},
		&vbatchv1.ReleaseRequest{BatchId: fuzzBatch, Chunk: 0, Token: token, Reason: fsm.ReleaseEngineCrash, StartedEnd: -5, Alone: true},
	} {
		data, _ := proto.Marshal(m)
		kind := uint8(4)
		switch m.(type) {
		case *vbatchv1.CompleteRequest:
			kind = 5
		case *vbatchv1.ReleaseRequest:
			kind = 6
		}
		f.Add(kind, data)
	}
	f.Add(uint8(4), []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		msg := agentRequests[int(kind)%len(agentRequests)]()
		if err := proto.Unmarshal(data, msg); err != nil {
			return // connect answers invalid_argument
		}
		// What decodes re-encodes to the same message.
		again := msg.ProtoReflect().New().Interface()
		if enc, err := proto.Marshal(msg); err != nil || proto.Unmarshal(enc, again) != nil || !proto.Equal(msg, again) {
			t.Fatalf("%T does not survive a re-encode: %v", msg, err)
		}
		h, token := rpcFixture(t)
		s := &agentService{c: &Coordinator{fsm: h.FSM}, telemetry: map[string]*AgentTelemetry{}}
		cmds, err := agentCommands(s, h.Clock, msg)
		if errors.Is(err, errRefused) {
			return
		}
		for _, cmd := range cmds {
			if err := applyChecked(t, h, cmd); err != nil {
				continue
			}
			cp, ok := cmd.(*vbatchv1.CommitPart)
			if c, done := cmd.(*vbatchv1.CompletePart); done {
				cp, ok = c.Commit, true
			}
			if !ok {
				continue
			}
			if cp.Part.Token != token || cp.BatchId != fuzzBatch || cp.Chunk != 0 {
				t.Fatalf("part committed under token %d on %s/%d; the live lease is %d on %s/0", cp.Part.Token, cp.BatchId, cp.Chunk, token, fuzzBatch)
			}
			h.FSM.View(func(st *fsm.State) {
				b := st.Batches[fuzzBatch]
				rc := b.RequestCounts
				if ch := b.Chunks[0]; ch.Progress != cp.Part.ToLine || rc.Completed+rc.Failed != ch.Progress || ch.Progress > ch.EndLine {
					t.Fatalf("after commit: progress %d, counts %v, chunk ends at %d", ch.Progress, rc, ch.EndLine)
				}
			})
		}
	})
}

// FuzzForwardedEnvelope feeds bytes to what ClusterService.Apply does
// with a forwarded command on the leader: fsm.Decode refuses it, or it is
// stamped and applied. Whatever Decode lets through must apply without
// panicking (FSM.Apply stops the node on an entry it cannot decode).
func FuzzForwardedEnvelope(f *testing.F) {
	_, token := rpcFixture(f)
	now := time.Unix(1_700_000_100, 0)
	for _, cmd := range []proto.Message{
		&vbatchv1.CommitPart{BatchId: fuzzBatch, Part: &vbatchv1.Part{FromLine: 0, ToLine: 4, Succeeded: 4, Token: token,
			Output: &vbatchv1.BlobRef{Sha256: "ab", Bytes: 10}}},
		&vbatchv1.CompletePart{Commit: &vbatchv1.CommitPart{BatchId: fuzzBatch, Part: &vbatchv1.Part{FromLine: 0, ToLine: 4, Succeeded: 4, Token: token,
			Output: &vbatchv1.BlobRef{Sha256: "ab", Bytes: 10}}}},
		&vbatchv1.FinishBatch{BatchId: fuzzBatch, Status: vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED, OutputFileId: "file-o", ErrorFileId: "file-e"},
		&vbatchv1.CancelBatch{BatchId: fuzzBatch, Project: "p"},
		&vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_x", Project: "p", Hash: []byte{1}, Limits: &vbatchv1.KeyLimits{RequestsPerSecond: 1}}},
		&vbatchv1.DeleteFile{Id: "file-in", Project: "p"},
		&vbatchv1.ExpireLeases{Leases: []*vbatchv1.LeaseRef{{BatchId: fuzzBatch, Chunk: 0, Token: token}}},
		&vbatchv1.StartBatch{BatchId: fuzzBatch, Total: -1, Chunks: []*vbatchv1.Chunk{{Index: 3}}},
	} {
		data, err := fsm.Encode(cmd, now)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, _, err := fsm.Decode(data); err != nil {
			return // answered invalid_argument, never proposed
		}
		h, _ := rpcFixture(t)
		stamped, err := fsm.Stamp(data, h.Clock)
		if err != nil {
			t.Fatalf("decodable envelope cannot be stamped: %v", err)
		}
		before := h.State()
		h.Index++
		res, ok := h.FSM.Apply(&raft.Log{Index: h.Index, Type: raft.LogCommand, Data: stamped}).(*vbatchv1.Result)
		if !ok {
			t.Fatal("apply returned no Result")
		}
		after := h.State()
		if err := fsm.FromResult(res); err != nil && !after.Equal(before) {
			t.Fatalf("refused (%v) but changed the state", err)
		}
		checkSnapshotRoundTrip(t, after, h.Index)
	})
}

// FuzzRestoreSnapshot feeds bytes to the snapshot reader that
// ClusterService.Restore and POST /v1/admin/cluster/snapshot/restore run
// before anything is replaced: it refuses them or returns a state that
// writes back to a stream reading as the same state.
func FuzzRestoreSnapshot(f *testing.F) {
	h, _ := rpcFixture(f)
	var buf bytes.Buffer
	if err := fsm.WriteSnapshot(&buf, h.State(), h.Index); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:buf.Len()/2])
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		st, hdr, err := fsm.ReadSnapshot(bytes.NewReader(data))
		if err != nil {
			return
		}
		checkSnapshotRoundTrip(t, st, hdr.AppliedIndex)
	})
}
