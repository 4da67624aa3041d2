package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestExpiryAfterMaxLineLowered: a batch validated under a larger
// --max-line-bytes still expires, with a batch_expired line per request,
// on a leader whose limit is now smaller than one of its lines.
func TestExpiryAfterMaxLineLowered(t *testing.T) {
	nodes := startCluster(t, 1, func(c *Config) { c.MaxLineBytes = 4096 })
	c := nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var in strings.Builder
	for i := range 3 {
		pad := ""
		if i == 1 {
			pad = strings.Repeat("x", 2000) // longer than the later limit
		}
		fmt.Fprintf(&in, `{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[],"user":"%s"}}`+"\n", i, pad)
	}
	ref, _, err := c.StoreUpload(ctx, strings.NewReader(in.String()))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	f := &vbatchv1.File{Id: "file-long", Project: "p", Purpose: "batch", Bytes: ref.Bytes, Sha256: ref.Sha256, Lines: 3,
		CreatedAt: 1, Parts: []*vbatchv1.BlobRef{ref}}
	if _, err := c.Apply(ctx, &vbatchv1.CreateFile{File: f}); err != nil {
		t.Fatalf("create file: %v", err)
	}
	const id = "batch_long"
	expires := c.Now().Add(3 * time.Second).Unix()
	if _, err := c.Apply(ctx, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: id, Project: "p", InputFileId: f.Id,
		Endpoint: "/v1/chat/completions", CompletionWindow: "24h", ExpiresAt: expires,
		Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING, RequestCounts: &vbatchv1.RequestCounts{}}}); err != nil {
		t.Fatalf("create batch: %v", err)
	}
	status := func(c *Coordinator) (b *vbatchv1.Batch) {
		consistentView(t, ctx, c, func(s *fsm.State) {
			if sb := s.Batches[id]; sb != nil {
				b = proto.Clone(sb).(*vbatchv1.Batch) // read outside the view
			}
		})
		return b
	}
	waitFor(t, 20*time.Second, "the batch to start", func() bool {
		return status(c).GetStatus() == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS
	})

	// The operator lowers the limit and restarts; no agent ever runs it.
	if err := c.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	cfg := c.cfg
	cfg.RaftAddr = c.raftNode.advertise
	cfg.Join = nil
	cfg.MaxLineBytes = 1024
	c = startNode(t, cfg)
	waitLeader(t, []*Coordinator{c})
	waitFor(t, 20*time.Second, "the batch to expire", func() bool {
		return status(c).GetStatus() == vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED
	})
	if b := status(c); b.RequestCounts.Failed != 3 || b.ErrorFileId == "" {
		t.Fatalf("expired batch = %v, want 3 batch_expired lines", b)
	}
}

// TestCancelWinsOverWindow: a batch cancelled while an agent held a lease,
// whose window then ends before the agent handed it back, ends cancelled
// (its lease ended by the leader), not expired with batch_expired lines
// for requests the user cancelled.
func TestCancelWinsOverWindow(t *testing.T) {
	nodes := startCluster(t, 1)
	c := nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	createInputFile(t, ctx, c, "file-cw", 0)
	const id = "batch_cw"
	if _, err := c.Apply(ctx, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: id, Project: "p", InputFileId: "file-cw",
		Endpoint: "/v1/chat/completions", CompletionWindow: "24h", ExpiresAt: c.Now().Add(3 * time.Second).Unix(),
		Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING, RequestCounts: &vbatchv1.RequestCounts{}}}); err != nil {
		t.Fatalf("create batch: %v", err)
	}
	batch := func() (b *vbatchv1.Batch) {
		consistentView(t, ctx, c, func(s *fsm.State) {
			if sb := s.Batches[id]; sb != nil {
				b = proto.Clone(sb).(*vbatchv1.Batch) // read outside the view
			}
		})
		return b
	}
	waitFor(t, 20*time.Second, "the batch to start", func() bool {
		return batch().GetStatus() == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS
	})
	if _, err := c.Apply(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1", Models: []string{"m"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Apply(ctx, &vbatchv1.GrantLease{BatchId: id, Chunk: 0, AgentId: "a1", ExpiresAt: c.Now().Add(time.Minute).UnixMilli()}); err != nil {
		t.Fatalf("grant: %v", err)
	}
	if _, err := c.Apply(ctx, &vbatchv1.CancelBatch{BatchId: id, Project: "p"}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	waitFor(t, 20*time.Second, "the batch to end", func() bool { return fsm.IsTerminal(batch().GetStatus()) })
	if b := batch(); b.Status != vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED || b.RequestCounts.Failed != 0 {
		t.Fatalf("batch = %v, want cancelled with no batch_expired line", b)
	}
}
