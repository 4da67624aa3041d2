package fsm

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestPropertyInvariants applies random command sequences, built against
// the current state so that many succeed and many are near misses (stale
// tokens, wrong ranges, wrong states), and checks the invariants after
// every step.
func TestPropertyInvariants(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := NewHarness()
		agents := []string{"a1", "a2", "a3"}
		for _, a := range agents {
			h.MustApply(rt, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: a, Models: []string{"m"}}})
		}
		var tokens []uint64
		steps := rapid.IntRange(10, 120).Draw(rt, "steps")
		for i := 0; i < steps; i++ {
			before := h.State()
			cmd := genCommand(rt, h, agents, tokens)
			err := h.Apply(rt, cmd)
			after := h.State()
			if _, ok := cmd.(*vbatchv1.GrantLease); ok && err == nil {
				tokens = append(tokens, h.Index)
			}
			if err != nil {
				after.Now = before.Now
				if !before.Equal(after) {
					rt.Fatalf("refused %T (%v) changed the state", cmd, err)
				}
			}
			checkInvariants(rt, before, after)
		}
		var buf bytes.Buffer
		if err := WriteSnapshot(&buf, h.State(), h.Index); err != nil {
			rt.Fatal(err)
		}
		st, _, err := ReadSnapshot(&buf)
		if err != nil || !st.Equal(h.State()) {
			rt.Fatalf("snapshot round trip: %v", err)
		}
	})
}

func genCommand(rt *rapid.T, h *Harness, agents []string, tokens []uint64) proto.Message {
	s := h.State()
	var batches []*vbatchv1.Batch
	for _, id := range sortedKeys(s.Batches) {
		batches = append(batches, s.Batches[id])
	}
	pickBatch := func() *vbatchv1.Batch {
		if len(batches) == 0 {
			return &vbatchv1.Batch{Id: "batch_none"}
		}
		return batches[rapid.IntRange(0, len(batches)-1).Draw(rt, "batch")]
	}
	pickChunk := func(b *vbatchv1.Batch) (*vbatchv1.Chunk, uint32) {
		if len(b.Chunks) == 0 {
			return &vbatchv1.Chunk{}, 0
		}
		i := rapid.IntRange(0, len(b.Chunks)-1).Draw(rt, "chunk")
		return b.Chunks[i], uint32(i)
	}
	pickToken := func(c *vbatchv1.Chunk) uint64 {
		if c.Lease != nil && rapid.Bool().Draw(rt, "liveToken") {
			return c.Lease.Token
		}
		if len(tokens) == 0 {
			return 1
		}
		return tokens[rapid.IntRange(0, len(tokens)-1).Draw(rt, "token")]
	}
	ms := func(d time.Duration) int64 { return h.Clock.Add(d).UnixMilli() }
	switch rapid.IntRange(0, 13).Draw(rt, "kind") {
	case 0:
		h.Advance(time.Duration(rapid.IntRange(0, 40).Draw(rt, "secs")) * time.Second)
		id := fmt.Sprintf("file-%d", h.Index)
		return &vbatchv1.CreateFile{File: &vbatchv1.File{Id: id, Project: "p", Lines: 10, Parts: []*vbatchv1.BlobRef{{Sha256: id, Bytes: 10}}}}
	case 1:
		var files []string
		for _, id := range sortedKeys(s.Files) {
			files = append(files, id)
		}
		in := "file-missing"
		if len(files) > 0 {
			in = files[rapid.IntRange(0, len(files)-1).Draw(rt, "file")]
		}
		window := time.Duration(rapid.IntRange(1, 300).Draw(rt, "window")) * time.Second
		return &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: fmt.Sprintf("batch_%d", h.Index), Project: "p", InputFileId: in, Endpoint: "/v1/chat/completions", ExpiresAt: h.Clock.Add(window).Unix()}}
	case 2:
		b := pickBatch()
		total := int64(rapid.IntRange(1, 40).Draw(rt, "total"))
		size := int64(rapid.IntRange(1, 15).Draw(rt, "size"))
		var chunks []*vbatchv1.Chunk
		for st := int64(0); st < total; st += size {
			chunks = append(chunks, &vbatchv1.Chunk{StartLine: st, EndLine: min(st+size, total)})
		}
		return &vbatchv1.StartBatch{BatchId: b.Id, Model: "m", Total: total, Chunks: chunks}
	case 3:
		return &vbatchv1.FailBatch{BatchId: pickBatch().Id, Errors: []*vbatchv1.BatchError{{Code: "x", Line: 1}}}
	case 4:
		b := pickBatch()
		_, ci := pickChunk(b)
		return &vbatchv1.GrantLease{BatchId: b.Id, Chunk: ci, AgentId: rapid.SampledFrom(agents).Draw(rt, "agent"), ExpiresAt: ms(30 * time.Second)}
	case 5:
		b := pickBatch()
		c, ci := pickChunk(b)
		return &vbatchv1.RenewLease{BatchId: b.Id, Chunk: ci, Token: pickToken(c), ExpiresAt: ms(30 * time.Second)}
	case 6, 7:
		b := pickBatch()
		c, ci := pickChunk(b)
		from := c.Progress
		if rapid.IntRange(0, 5).Draw(rt, "offFrom") == 0 {
			from += int64(rapid.IntRange(-2, 2).Draw(rt, "delta"))
		}
		to := from + int64(rapid.IntRange(0, 12).Draw(rt, "len"))
		n := to - from
		ok := int64(0)
		if n > 0 {
			ok = int64(rapid.IntRange(0, int(n)).Draw(rt, "ok"))
		}
		return &vbatchv1.CommitPart{BatchId: b.Id, Chunk: ci, Part: &vbatchv1.Part{
			FromLine: from, ToLine: to, Token: pickToken(c), Succeeded: ok, Failed: n - ok,
			Output: &vbatchv1.BlobRef{Sha256: fmt.Sprintf("o%d", h.Index), Bytes: 1}, Errors: &vbatchv1.BlobRef{Sha256: fmt.Sprintf("e%d", h.Index), Bytes: 1},
		}, Usage: &vbatchv1.Usage{InputTokens: 1, OutputTokens: 1, TotalTokens: 2}}
	case 8:
		b := pickBatch()
		c, ci := pickChunk(b)
		return &vbatchv1.CompleteChunk{BatchId: b.Id, Chunk: ci, Token: pickToken(c)}
	case 9:
		b := pickBatch()
		c, ci := pickChunk(b)
		if rapid.Bool().Draw(rt, "release") {
			return &vbatchv1.ReleaseLease{BatchId: b.Id, Chunk: ci, Token: pickToken(c)}
		}
		return &vbatchv1.ExpireLeases{Leases: []*vbatchv1.LeaseRef{{BatchId: b.Id, Chunk: ci, Token: pickToken(c)}}}
	case 10:
		return &vbatchv1.CancelBatch{BatchId: pickBatch().Id}
	case 11:
		return &vbatchv1.BeginFinalize{BatchId: pickBatch().Id}
	case 12:
		b := pickBatch()
		status := rapid.SampledFrom([]vbatchv1.BatchStatus{stCompleted, stCancelled, stExpired}).Draw(rt, "end")
		cmd := &vbatchv1.FinishBatch{BatchId: b.Id, Status: status, OutputFileId: fmt.Sprintf("out-%d", h.Index), ErrorFileId: fmt.Sprintf("err-%d", h.Index)}
		if status == stExpired && rapid.Bool().Draw(rt, "withExtra") {
			var missing int64
			for _, c := range b.Chunks {
				cmd.ExpectedProgress = append(cmd.ExpectedProgress, c.Progress)
				if c.State != chDone {
					missing += c.EndLine - c.Progress
				}
			}
			if missing > 0 {
				cmd.ExtraErrors, cmd.ExtraFailed = &vbatchv1.BlobRef{Sha256: "x", Bytes: 1}, missing
			}
		}
		return cmd
	default:
		return &vbatchv1.DrainAgent{AgentId: rapid.SampledFrom(agents).Draw(rt, "agent")}
	}
}

func checkInvariants(rt *rapid.T, before, after *State) {
	for id, b := range after.Batches {
		old, existed := before.Batches[id]
		if existed {
			if IsTerminal(old.Status) && !proto.Equal(old, b) {
				rt.Fatalf("terminal batch %s changed", id)
			}
			if old.Status != b.Status && !ValidTransition(old.Status, b.Status) {
				rt.Fatalf("batch %s moved %s -> %s", id, StatusName(old.Status), StatusName(b.Status))
			}
		}
		var completed, failed int64
		for _, c := range b.Chunks {
			if (c.State == chLeased) != (c.Lease != nil) && c.State != chDone {
				rt.Fatalf("batch %s chunk %d: state %v with lease %v", id, c.Index, c.State, c.Lease)
			}
			if c.State == chDone && c.Progress != c.EndLine {
				rt.Fatalf("batch %s chunk %d done at %d of %d", id, c.Index, c.Progress, c.EndLine)
			}
			line := c.StartLine
			for _, p := range c.Parts {
				if p.FromLine != line {
					rt.Fatalf("batch %s chunk %d: parts not contiguous", id, c.Index)
				}
				line = p.ToLine
				completed += p.Succeeded
				failed += p.Failed
			}
			if !IsTerminal(b.Status) && line != c.Progress {
				rt.Fatalf("batch %s chunk %d: parts end at %d, progress %d", id, c.Index, line, c.Progress)
			}
		}
		rc := b.RequestCounts
		if !IsTerminal(b.Status) && (rc.Completed != completed || rc.Failed != failed) {
			rt.Fatalf("batch %s counts %v, parts say %d/%d", id, rc, completed, failed)
		}
		if rc.Completed+rc.Failed > rc.Total && b.Status != stValidating {
			rt.Fatalf("batch %s counts %v exceed total", id, rc)
		}
	}
	for id := range before.Batches {
		if _, ok := after.Batches[id]; !ok {
			rt.Fatalf("batch %s vanished", id)
		}
	}
}
