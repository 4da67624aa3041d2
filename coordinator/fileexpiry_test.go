package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// createInputFile stores a one-request batch input through c and commits
// it as file id of project p, expiring at expiresAt (0: never).
func createInputFile(t testing.TB, ctx context.Context, c *Coordinator, id string, expiresAt int64) {
	t.Helper()
	line := `{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}` + "\n"
	ref, _, err := c.StoreUpload(ctx, strings.NewReader(line))
	if err != nil {
		t.Fatalf("upload %s: %v", id, err)
	}
	f := &vbatchv1.File{Id: id, Project: "p", Purpose: "batch", Bytes: ref.Bytes, Sha256: ref.Sha256, Lines: 1,
		CreatedAt: 1, ExpiresAt: expiresAt, Parts: []*vbatchv1.BlobRef{ref}}
	if _, err := c.Apply(ctx, &vbatchv1.CreateFile{File: f}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
}

// createBatch commits a new batch of project p on input file fileID; the
// leader validates and starts it (no agent serves model m, so it waits).
func createBatch(t testing.TB, ctx context.Context, c *Coordinator, id, fileID string) {
	t.Helper()
	if _, err := c.Apply(ctx, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: id, Project: "p", InputFileId: fileID,
		Endpoint: "/v1/chat/completions", CompletionWindow: "24h", ExpiresAt: c.Now().Add(time.Hour).Unix(),
		Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING, RequestCounts: &vbatchv1.RequestCounts{}}}); err != nil {
		t.Fatalf("create batch %s: %v", id, err)
	}
}

// consistentView runs fn on c's state after a consistent read.
func consistentView(t testing.TB, ctx context.Context, c *Coordinator, fn func(s *fsm.State)) {
	t.Helper()
	if err := c.ConsistentRead(ctx); err != nil {
		t.Fatalf("consistent read: %v", err)
	}
	c.fsm.View(fn)
}

// TestLeaderDeletesExpiredFiles: a file past its expires_after is deleted
// by the leader, keeping its list position, except while a live batch
// still reads it; once that batch ends, it goes too.
func TestLeaderDeletesExpiredFiles(t *testing.T) {
	nodes := startCluster(t, 3)
	c := follower(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Far enough ahead that the setup below finishes before it on a loaded
	// machine (expiry is in whole seconds).
	expires := c.Now().Add(5 * time.Second).Unix()
	createInputFile(t, ctx, c, "file-unused", expires)
	createInputFile(t, ctx, c, "file-input", expires)
	createInputFile(t, ctx, c, "file-kept", 0)
	const batch = "batch_exp"
	createBatch(t, ctx, c, batch, "file-input")
	exists := func(id string) (ok bool) {
		consistentView(t, ctx, c, func(s *fsm.State) { _, ok = s.Files[id] })
		return ok
	}
	waitFor(t, 20*time.Second, "the unused expired file to be deleted", func() bool { return !exists("file-unused") })
	// Its list position stays, for a client paging with it as the cursor.
	consistentView(t, ctx, c, func(s *fsm.State) {
		if tomb := s.FileTombstones["file-unused"]; tomb.GetProject() != "p" || tomb.GetCreatedAt() != 1 {
			t.Errorf("expired file deleted without its position: tombstone %v", tomb)
		}
	})
	// A few sweeps past the expiry: the input stays while its batch runs.
	waitFor(t, 20*time.Second, "three housekeeping sweeps past the expiry", func() bool {
		return c.Now().Unix() >= expires+3
	})
	if !exists("file-input") {
		t.Fatal("the input of a live batch was deleted at its expiry")
	}
	if !exists("file-kept") {
		t.Fatal("a file without an expiry was deleted")
	}
	if _, err := c.Apply(ctx, &vbatchv1.CancelBatch{BatchId: batch, Project: "p"}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	waitFor(t, 20*time.Second, "the expired input to be deleted once its batch ended", func() bool { return !exists("file-input") })
}

// TestLeaderCompactsFinishedBatches: BatchCompactAfter after a batch ends,
// the leader drops its chunk records; a running batch keeps them.
func TestLeaderCompactsFinishedBatches(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.BatchCompactAfter = time.Millisecond })
	c := follower(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	createInputFile(t, ctx, c, "file-in", 0)
	createBatch(t, ctx, c, "batch_done", "file-in")
	createBatch(t, ctx, c, "batch_live", "file-in")
	started := func(id string) (ok bool) {
		consistentView(t, ctx, c, func(s *fsm.State) {
			ok = s.Batches[id].GetStatus() == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS && len(s.Batches[id].Chunks) > 0
		})
		return ok
	}
	waitFor(t, 20*time.Second, "both batches to start", func() bool { return started("batch_done") && started("batch_live") })
	if _, err := c.Apply(ctx, &vbatchv1.CancelBatch{BatchId: "batch_done", Project: "p"}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	waitFor(t, 20*time.Second, "the cancelled batch to be compacted", func() (ok bool) {
		consistentView(t, ctx, c, func(s *fsm.State) {
			b := s.Batches["batch_done"]
			ok = b.GetStatus() == vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED && b.Compacted && len(b.Chunks) == 0
		})
		return ok
	})
	if !started("batch_live") {
		t.Fatal("a running batch lost its chunks")
	}
}
