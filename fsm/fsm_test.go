package fsm

import (
	"bytes"
	"errors"
	"testing"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

const proj = "p1"

func ref(sha string, n int64) *vbatchv1.BlobRef { return &vbatchv1.BlobRef{Sha256: sha, Bytes: n} }

// setup creates an input file of `lines` lines, a batch on it started with
// chunks of chunkSize lines, and a registered agent "a1".
func setup(t *testing.T, lines, chunkSize int64) *Harness {
	t.Helper()
	h := NewHarness()
	h.MustApply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "file-in", Project: proj, Purpose: "batch", Bytes: 100, Lines: lines, Parts: []*vbatchv1.BlobRef{ref("in", 100)}}})
	h.MustApply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "batch_1", Project: proj, InputFileId: "file-in", Endpoint: "/v1/chat/completions", CompletionWindow: "24h", ExpiresAt: h.Clock.Add(24 * time.Hour).Unix()}})
	var chunks []*vbatchv1.Chunk
	for s := int64(0); s < lines; s += chunkSize {
		chunks = append(chunks, &vbatchv1.Chunk{StartLine: s, EndLine: min(s+chunkSize, lines), StartOffset: s * 10, EndOffset: min(s+chunkSize, lines) * 10})
	}
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: "batch_1", Model: "m", Total: lines, Chunks: chunks})
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1", Models: []string{"m"}}})
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a2", Models: []string{"m"}}})
	return h
}

func (h *Harness) batch(id string) *vbatchv1.Batch { return h.State().Batches[id] }

func grant(t *testing.T, h *Harness, chunk uint32, agent string) uint64 {
	t.Helper()
	h.MustApply(t, &vbatchv1.GrantLease{BatchId: "batch_1", Chunk: chunk, AgentId: agent, ExpiresAt: h.Clock.Add(30 * time.Second).UnixMilli()})
	return h.Index
}

func part(chunk uint32, token uint64, from, to, ok int64) *vbatchv1.CommitPart {
	return &vbatchv1.CommitPart{BatchId: "batch_1", Chunk: chunk, Part: &vbatchv1.Part{
		FromLine: from, ToLine: to, Token: token, Succeeded: ok, Failed: to - from - ok,
		Output: ref("out", 10), Errors: ref("err", 5),
	}, Usage: &vbatchv1.Usage{InputTokens: 3, OutputTokens: 4, TotalTokens: 7}}
}

func refused(t *testing.T, h *Harness, kind error, apply func() error) {
	t.Helper()
	before := h.State()
	err := apply()
	if !errors.Is(err, kind) {
		t.Fatalf("got %v, want %v", err, kind)
	}
	after := h.State()
	after.Now = before.Now
	if !before.Equal(after) {
		t.Fatalf("refused command changed the state")
	}
}

func TestFileCommands(t *testing.T) {
	h := NewHarness()
	f := &vbatchv1.File{Id: "file-1", Project: proj, Purpose: "batch", Bytes: 3, CreatedAt: 5, Parts: []*vbatchv1.BlobRef{ref("a", 3)}}
	h.MustApply(t, &vbatchv1.CreateFile{File: f})
	h.MustApply(t, &vbatchv1.CreateFile{File: f}) // idempotent retry
	refused(t, h, ErrExists, func() error {
		return h.Apply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "file-1", Project: proj, Bytes: 9}})
	})
	refused(t, h, ErrInvalid, func() error { return h.Apply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "x"}}) })
	refused(t, h, ErrNotFound, func() error { return h.Apply(t, &vbatchv1.DeleteFile{Id: "file-1", Project: "other"}) })
	h.MustApply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "batch_x", Project: proj, InputFileId: "file-1", Endpoint: "/v1/chat/completions"}})
	refused(t, h, ErrConflict, func() error { return h.Apply(t, &vbatchv1.DeleteFile{Id: "file-1", Project: proj}) })
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: "batch_x", Project: proj})
	h.MustApply(t, &vbatchv1.DeleteFile{Id: "file-1", Project: proj})
	refused(t, h, ErrNotFound, func() error { return h.Apply(t, &vbatchv1.DeleteFile{Id: "file-1"}) })
	if got := h.batch("batch_x").Status; got != stCancelled {
		t.Fatalf("validating batch cancel: status %v", got)
	}
}

func TestAPIKeyCommands(t *testing.T) {
	h := NewHarness()
	k := &vbatchv1.APIKey{Id: "key_1", Project: proj, Hash: []byte{1}, Salt: []byte{2}, CreatedAt: 1}
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: k})
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: k})
	refused(t, h, ErrExists, func() error {
		return h.Apply(t, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "key_1", Project: "q", Hash: []byte{3}}})
	})
	h.MustApply(t, &vbatchv1.RevokeAPIKey{Id: "key_1"})
	if h.State().APIKeys["key_1"].RevokedAt == 0 {
		t.Fatal("revoked_at not set")
	}
	refused(t, h, ErrNotFound, func() error { return h.Apply(t, &vbatchv1.RevokeAPIKey{Id: "nope"}) })
}

func TestBatchValidation(t *testing.T) {
	h := NewHarness()
	refused(t, h, ErrNotFound, func() error {
		return h.Apply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "b", Project: proj, InputFileId: "missing", Endpoint: "/v1/embeddings"}})
	})
	h.MustApply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "f", Project: proj}})
	refused(t, h, ErrNotFound, func() error {
		return h.Apply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "b", Project: "other", InputFileId: "f", Endpoint: "/v1/embeddings"}})
	})
	h.MustApply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "b", Project: proj, InputFileId: "f", Endpoint: "/v1/embeddings"}})
	h.MustApply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "b", Project: proj, InputFileId: "f", Endpoint: "/v1/embeddings"}})
	refused(t, h, ErrInvalid, func() error {
		return h.Apply(t, &vbatchv1.StartBatch{BatchId: "b", Model: "m", Total: 10, Chunks: []*vbatchv1.Chunk{{StartLine: 0, EndLine: 4}, {StartLine: 5, EndLine: 10}}})
	})
	refused(t, h, ErrInvalid, func() error {
		return h.Apply(t, &vbatchv1.StartBatch{BatchId: "b", Model: "m", Total: 10, Chunks: []*vbatchv1.Chunk{{StartLine: 0, EndLine: 4}}})
	})
	errs := []*vbatchv1.BatchError{{Code: "invalid_json_line", Line: 2, Message: "bad"}}
	h.MustApply(t, &vbatchv1.FailBatch{BatchId: "b", Errors: errs})
	h.MustApply(t, &vbatchv1.FailBatch{BatchId: "b", Errors: errs})
	b := h.batch("b")
	if b.Status != stFailed || b.FailedAt == 0 || len(b.Errors) != 1 || b.Errors[0].Line != 2 {
		t.Fatalf("failed batch = %v", b)
	}
	refused(t, h, ErrConflict, func() error {
		return h.Apply(t, &vbatchv1.StartBatch{BatchId: "b", Model: "m", Total: 1, Chunks: []*vbatchv1.Chunk{{EndLine: 1}}})
	})
	refused(t, h, ErrConflict, func() error { return h.Apply(t, &vbatchv1.CancelBatch{BatchId: "b"}) })
}

func TestLeaseLifecycleAndFencing(t *testing.T) {
	h := setup(t, 250, 100)
	b := h.batch("batch_1")
	if b.Status != stInProgress || len(b.Chunks) != 3 || b.RequestCounts.Total != 250 || b.InProgressAt == 0 {
		t.Fatalf("started batch = %v", b)
	}
	tok := grant(t, h, 0, "a1")
	refused(t, h, ErrConflict, func() error {
		return h.Apply(t, &vbatchv1.GrantLease{BatchId: "batch_1", Chunk: 0, AgentId: "a2", ExpiresAt: h.Clock.Add(time.Minute).UnixMilli()})
	})
	refused(t, h, ErrNotFound, func() error {
		return h.Apply(t, &vbatchv1.GrantLease{BatchId: "batch_1", Chunk: 1, AgentId: "ghost", ExpiresAt: h.Clock.Add(time.Minute).UnixMilli()})
	})
	h.MustApply(t, part(0, tok, 0, 40, 38))
	h.MustApply(t, part(0, tok, 0, 40, 38)) // retried commit
	refused(t, h, ErrConflict, func() error { return h.Apply(t, part(0, tok, 50, 60, 10)) })
	refused(t, h, ErrInvalid, func() error { return h.Apply(t, part(0, tok, 40, 120, 80)) })
	refused(t, h, ErrStaleToken, func() error { return h.Apply(t, part(0, tok+100, 40, 50, 10)) })
	refused(t, h, ErrConflict, func() error {
		return h.Apply(t, &vbatchv1.CompleteChunk{BatchId: "batch_1", Chunk: 0, Token: tok})
	})

	// The lease runs out: a new agent takes the chunk from line 40, and the
	// old token is refused from then on.
	h.Advance(31 * time.Second)
	refused(t, h, ErrStaleToken, func() error { return h.Apply(t, part(0, tok, 40, 50, 10)) })
	tok2 := grant(t, h, 0, "a2")
	if c := h.batch("batch_1").Chunks[0]; c.Progress != 40 || c.Attempts != 2 {
		t.Fatalf("re-leased chunk progress %d attempts %d", c.Progress, c.Attempts)
	}
	refused(t, h, ErrStaleToken, func() error { return h.Apply(t, part(0, tok, 40, 50, 10)) })
	refused(t, h, ErrStaleToken, func() error {
		return h.Apply(t, &vbatchv1.RenewLease{BatchId: "batch_1", Chunk: 0, Token: tok, ExpiresAt: h.Clock.Add(time.Minute).UnixMilli()})
	})
	h.MustApply(t, &vbatchv1.RenewLease{BatchId: "batch_1", Chunk: 0, Token: tok2, ExpiresAt: h.Clock.Add(time.Minute).UnixMilli()})
	h.MustApply(t, part(0, tok2, 40, 100, 60))
	h.MustApply(t, &vbatchv1.CompleteChunk{BatchId: "batch_1", Chunk: 0, Token: tok2})
	h.MustApply(t, &vbatchv1.CompleteChunk{BatchId: "batch_1", Chunk: 0, Token: tok2})

	// Release keeps progress; expire skips stale refs.
	tok3 := grant(t, h, 1, "a1")
	h.MustApply(t, part(1, tok3, 100, 110, 10))
	h.MustApply(t, &vbatchv1.ReleaseLease{BatchId: "batch_1", Chunk: 1, Token: tok3, Reason: "drain"})
	refused(t, h, ErrStaleToken, func() error {
		return h.Apply(t, &vbatchv1.ReleaseLease{BatchId: "batch_1", Chunk: 1, Token: tok3})
	})
	c1 := h.batch("batch_1").Chunks[1]
	if c1.State != chPending || c1.Progress != 110 || c1.Lease != nil {
		t.Fatalf("released chunk = %v", c1)
	}
	tok4 := grant(t, h, 1, "a1")
	h.MustApply(t, &vbatchv1.ExpireLeases{Leases: []*vbatchv1.LeaseRef{{BatchId: "batch_1", Chunk: 1, Token: tok3}}})
	if h.batch("batch_1").Chunks[1].State != chLeased {
		t.Fatal("expire with a stale ref ended the live lease")
	}
	h.MustApply(t, &vbatchv1.ExpireLeases{Leases: []*vbatchv1.LeaseRef{{BatchId: "batch_1", Chunk: 1, Token: tok4}}})
	if h.batch("batch_1").Chunks[1].State != chPending {
		t.Fatal("expire did not end the lease")
	}
	b = h.batch("batch_1")
	if b.RequestCounts.Completed != 38+60+10 || b.RequestCounts.Failed != 2 || b.Usage.TotalTokens != 21 {
		t.Fatalf("counts %v usage %v", b.RequestCounts, b.Usage)
	}
}

func TestDrainAndRemoveAgent(t *testing.T) {
	h := setup(t, 100, 50)
	grant(t, h, 0, "a1")
	h.MustApply(t, &vbatchv1.DrainAgent{AgentId: "a1"})
	refused(t, h, ErrConflict, func() error {
		return h.Apply(t, &vbatchv1.GrantLease{BatchId: "batch_1", Chunk: 1, AgentId: "a1", ExpiresAt: h.Clock.Add(time.Minute).UnixMilli()})
	})
	h.MustApply(t, &vbatchv1.RemoveAgent{AgentId: "a1"})
	if c := h.batch("batch_1").Chunks[0]; c.State != chPending {
		t.Fatalf("removed agent's chunk is %v", c.State)
	}
	refused(t, h, ErrNotFound, func() error { return h.Apply(t, &vbatchv1.DrainAgent{AgentId: "a1"}) })
}

// runAll commits every chunk of batch_1 fully with agent a1.
func runAll(t *testing.T, h *Harness) {
	t.Helper()
	for _, c := range h.batch("batch_1").Chunks {
		tok := grant(t, h, c.Index, "a1")
		h.MustApply(t, part(c.Index, tok, c.Progress, c.EndLine, c.EndLine-c.Progress-1))
		h.MustApply(t, &vbatchv1.CompleteChunk{BatchId: "batch_1", Chunk: c.Index, Token: tok})
	}
}

func TestFinalizeBuildsFilesWithoutCopying(t *testing.T) {
	h := setup(t, 250, 100)
	refused(t, h, ErrConflict, func() error { return h.Apply(t, &vbatchv1.BeginFinalize{BatchId: "batch_1"}) })
	runAll(t, h)
	h.MustApply(t, &vbatchv1.BeginFinalize{BatchId: "batch_1"})
	refused(t, h, ErrConflict, func() error { return h.Apply(t, &vbatchv1.CancelBatch{BatchId: "batch_1"}) })
	fin := &vbatchv1.FinishBatch{BatchId: "batch_1", Status: stCompleted, OutputFileId: "file-out", ErrorFileId: "file-err"}
	h.MustApply(t, fin)
	h.MustApply(t, &vbatchv1.FinishBatch{BatchId: "batch_1", Status: stCompleted, OutputFileId: "file-x", ErrorFileId: "file-y"})
	s := h.State()
	b := s.Batches["batch_1"]
	if b.Status != stCompleted || b.CompletedAt == 0 || b.FinalizingAt == 0 || b.OutputFileId != "file-out" || b.ErrorFileId != "file-err" {
		t.Fatalf("completed batch = %v", b)
	}
	out, errf := s.Files["file-out"], s.Files["file-err"]
	if len(out.Parts) != 3 || out.Bytes != 30 || out.Lines != 247 || errf.Lines != 3 || out.Purpose != "batch_output" {
		t.Fatalf("output %v error %v", out, errf)
	}
	if _, ok := s.Files["file-x"]; ok {
		t.Fatal("a repeated finish created another file")
	}
	refs := ReferencedBlobs(s)
	for _, sha := range []string{"in", "out", "err"} {
		if _, ok := refs[sha]; !ok {
			t.Fatalf("blob %s not referenced", sha)
		}
	}
}

func TestCancelAndExpire(t *testing.T) {
	h := setup(t, 200, 100)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, part(0, tok, 0, 30, 30))
	h.MustApply(t, &vbatchv1.CancelBatch{BatchId: "batch_1", Project: proj})
	if h.batch("batch_1").Status != stCancelling {
		t.Fatal("not cancelling")
	}
	refused(t, h, ErrConflict, func() error {
		return h.Apply(t, &vbatchv1.FinishBatch{BatchId: "batch_1", Status: stCancelled, OutputFileId: "o", ErrorFileId: "e"})
	})
	h.MustApply(t, part(0, tok, 30, 40, 10)) // in-flight work still commits
	h.MustApply(t, &vbatchv1.ReleaseLease{BatchId: "batch_1", Chunk: 0, Token: tok})
	h.MustApply(t, &vbatchv1.FinishBatch{BatchId: "batch_1", Status: stCancelled, OutputFileId: "o", ErrorFileId: "e"})
	s := h.State()
	if b := s.Batches["batch_1"]; b.Status != stCancelled || b.OutputFileId != "o" || b.ErrorFileId != "" || b.RequestCounts.Completed != 40 {
		t.Fatalf("cancelled batch = %v", b)
	}

	h = setup(t, 200, 100)
	tok = grant(t, h, 1, "a1")
	h.MustApply(t, part(1, tok, 100, 150, 50))
	exp := &vbatchv1.FinishBatch{BatchId: "batch_1", Status: stExpired, OutputFileId: "o", ErrorFileId: "e",
		ExtraErrors: ref("expired", 99), ExtraFailed: 150, ExpectedProgress: []int64{0, 150}}
	refused(t, h, ErrConflict, func() error { return h.Apply(t, exp) }) // not yet
	h.Advance(25 * time.Hour)
	stale := &vbatchv1.FinishBatch{BatchId: "batch_1", Status: stExpired, OutputFileId: "o", ErrorFileId: "e",
		ExtraErrors: ref("expired", 99), ExtraFailed: 150, ExpectedProgress: []int64{0, 120}}
	refused(t, h, ErrConflict, func() error { return h.Apply(t, stale) })
	h.MustApply(t, exp)
	b := h.batch("batch_1")
	if b.Status != stExpired || b.ExpiredAt == 0 || b.RequestCounts.Failed != 150 || b.RequestCounts.Completed != 50 {
		t.Fatalf("expired batch = %v", b)
	}
	if b.Chunks[1].Lease != nil {
		t.Fatal("expired batch kept a lease")
	}
	if f := h.State().Files["e"]; f == nil || f.Lines != 150 || f.Parts[len(f.Parts)-1].Sha256 != "expired" {
		t.Fatalf("error file = %v", f)
	}
	refused(t, h, ErrStaleToken, func() error { return h.Apply(t, part(1, tok, 150, 160, 10)) })
}

func TestExtendLeasesOnNewLeader(t *testing.T) {
	h := setup(t, 100, 50)
	tok := grant(t, h, 0, "a1")
	h.Advance(29 * time.Second)
	h.MustApply(t, &vbatchv1.ExtendLeases{ExpiresAt: h.Clock.Add(30 * time.Second).UnixMilli()})
	h.Advance(20 * time.Second)
	h.MustApply(t, part(0, tok, 0, 10, 10))
}

func TestSnapshotRoundTrip(t *testing.T) {
	h := setup(t, 250, 100)
	tok := grant(t, h, 0, "a1")
	h.MustApply(t, part(0, tok, 0, 10, 9))
	h.MustApply(t, &vbatchv1.CreateAPIKey{Key: &vbatchv1.APIKey{Id: "k", Project: proj, Hash: []byte{1}}})
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, h.State(), h.Index); err != nil {
		t.Fatal(err)
	}
	st, applied, err := ReadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if applied != h.Index || !st.Equal(h.State()) || st.Now != h.State().Now {
		t.Fatal("restored state differs")
	}
	var again bytes.Buffer
	if err := WriteSnapshot(&again, st, applied); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatal("snapshot of a restored state is not byte-identical")
	}
	f := New()
	if err := f.Restore(nopCloser{bytes.NewReader(buf.Bytes())}); err != nil {
		t.Fatal(err)
	}
	if f.AppliedIndex() != h.Index {
		t.Fatalf("applied index after restore %d", f.AppliedIndex())
	}
	if _, _, err := ReadSnapshot(bytes.NewReader(buf.Bytes()[:buf.Len()/2])); err == nil {
		t.Fatal("truncated snapshot accepted")
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func TestDecodeFailureStopsTheNode(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("undecodable entry did not panic")
		}
	}()
	New().Apply(rawLog([]byte{0xff, 0xff}))
}
