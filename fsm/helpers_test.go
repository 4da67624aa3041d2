package fsm

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

const (
	proj  = "proj_1"
	batch = "batch_1"
)

func blob(sha string, n int64) *vbatchv1.BlobRef { return &vbatchv1.BlobRef{Sha256: sha, Bytes: n} }

// inputFile is a batch input file of n lines.
func inputFile(id string, n int64) *vbatchv1.CreateFile {
	return &vbatchv1.CreateFile{File: &vbatchv1.File{
		Id: id, Project: proj, Purpose: "batch", Filename: "in.jsonl", Bytes: n * 10, Lines: n,
		Parts: []*vbatchv1.BlobRef{blob("sha-"+id, n*10)},
	}}
}

// newBatch is a CreateBatch for batch_1 on file-in, expiring in a day.
func newBatch(h *Harness) *vbatchv1.CreateBatch {
	return &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{
		Id: batch, Project: proj, InputFileId: "file-in", Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", Metadata: map[string]string{"k": "v"},
		CreatedAt: h.Clock.Unix(), ExpiresAt: h.Clock.Add(24 * time.Hour).Unix(),
	}}
}

// chunking cuts [0,total) into chunks of size lines.
func chunking(total, size int64) []*vbatchv1.Chunk {
	var cs []*vbatchv1.Chunk
	for s := int64(0); s < total; s += size {
		e := min(s+size, total)
		cs = append(cs, &vbatchv1.Chunk{Index: uint32(len(cs)), StartLine: s, EndLine: e, StartOffset: s * 10, EndOffset: e * 10})
	}
	return cs
}

// validating sets up file-in of total lines and batch_1, validating.
func validating(t *testing.T, total int64) *Harness {
	t.Helper()
	h := NewHarness()
	h.MustApply(t, inputFile("file-in", total))
	h.MustApply(t, newBatch(h))
	return h
}

// running sets up batch_1 in progress over total lines in chunks of size,
// and registers agents a1 and a2.
func running(t *testing.T, total, size int64) *Harness {
	t.Helper()
	h := validating(t, total)
	h.MustApply(t, &vbatchv1.StartBatch{BatchId: batch, Model: "m", Total: total, Chunks: chunking(total, size)})
	for _, id := range []string{"a1", "a2"} {
		h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: id, Models: []string{"m"}}})
	}
	return h
}

func (h *Harness) batch(id string) *vbatchv1.Batch { return h.State().Batches[id] }

func (h *Harness) chunk(i uint32) *vbatchv1.Chunk { return h.batch(batch).Chunks[i] }

// leaseTTL is the lease length the tests grant and renew with.
const leaseTTL = 30 * time.Second

func (h *Harness) expiry() int64 { return h.Clock.Add(leaseTTL).UnixMilli() }

func grantCmd(h *Harness, chunk uint32, agent string) *vbatchv1.GrantLease {
	return &vbatchv1.GrantLease{BatchId: batch, Chunk: chunk, AgentId: agent, ExpiresAt: h.expiry()}
}

// grant leases a chunk of batch_1 to agent and returns the token.
func grant(t *testing.T, h *Harness, chunk uint32, agent string) uint64 {
	t.Helper()
	return h.MustApply(t, grantCmd(h, chunk, agent))
}

// commit is a part of [from,to) of a chunk of batch_1 with ok lines
// succeeded and the rest failed.
// completing wraps a part that ends its chunk in a CompletePart.
func completing(c *vbatchv1.CommitPart) *vbatchv1.CompletePart {
	return &vbatchv1.CompletePart{Commit: c}
}

func commit(chunk uint32, token uint64, from, to, ok int64) *vbatchv1.CommitPart {
	return &vbatchv1.CommitPart{BatchId: batch, Chunk: chunk, Part: &vbatchv1.Part{
		FromLine: from, ToLine: to, Token: token, Succeeded: ok, Failed: to - from - ok,
		Output: blob("out", 10*ok), Errors: blob("err", 10*(to-from-ok)),
	}, Usage: &vbatchv1.Usage{InputTokens: 3, OutputTokens: 4, TotalTokens: 7}}
}

func complete(chunk uint32, token uint64) *vbatchv1.CompleteChunk {
	return &vbatchv1.CompleteChunk{BatchId: batch, Chunk: chunk, Token: token}
}

// runChunk leases a chunk to a1, commits it whole with ok succeeded lines
// and completes it.
func runChunk(t *testing.T, h *Harness, chunk uint32, ok int64) {
	t.Helper()
	c := h.chunk(chunk)
	tok := grant(t, h, chunk, "a1")
	h.MustApply(t, commit(chunk, tok, c.Progress, c.EndLine, ok))
	h.MustApply(t, complete(chunk, tok))
}

// refused applies cmd, checks it is rejected with kind and that no record
// changed.
func refused(t *testing.T, h *Harness, kind error, cmd proto.Message) {
	t.Helper()
	before := h.State()
	err := h.Apply(t, cmd)
	if !errors.Is(err, kind) {
		t.Fatalf("%T: got %v, want %v", cmd, err, kind)
	}
	if after := h.State(); !before.Equal(after) {
		t.Fatalf("refused %T (%v) changed the state", cmd, err)
	}
}

// unchanged applies cmd, checks it succeeds and changes no record: an
// idempotent re-apply.
func unchanged(t *testing.T, h *Harness, cmd proto.Message) {
	t.Helper()
	before := h.State()
	h.MustApply(t, cmd)
	if after := h.State(); !before.Equal(after) {
		t.Fatalf("re-applied %T changed the state", cmd)
	}
}
