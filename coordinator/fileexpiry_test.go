package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestLeaderDeletesExpiredFiles: a file past its expires_after is deleted
// by the leader, except while a live batch still reads it; once that batch
// ends, it goes too.
func TestLeaderDeletesExpiredFiles(t *testing.T) {
	nodes := startCluster(t, 3)
	c := follower(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	line := `{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}` + "\n"
	ref, _, err := c.StoreUpload(ctx, strings.NewReader(line))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	expires := c.Now().Add(2 * time.Second).Unix()
	file := func(id string) *vbatchv1.File {
		return &vbatchv1.File{Id: id, Project: "p", Purpose: "batch", Bytes: ref.Bytes, Sha256: ref.Sha256, Lines: 1,
			CreatedAt: 1, ExpiresAt: expires, Parts: []*vbatchv1.BlobRef{ref}}
	}
	const batch = "batch_exp"
	for _, cmd := range []*vbatchv1.CreateFile{{File: file("file-unused")}, {File: file("file-input")}, {File: &vbatchv1.File{
		Id: "file-kept", Project: "p", Purpose: "batch", Bytes: ref.Bytes, Sha256: ref.Sha256, Lines: 1, CreatedAt: 1, Parts: []*vbatchv1.BlobRef{ref}}}} {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatalf("create %s: %v", cmd.File.Id, err)
		}
	}
	if _, err := c.Apply(ctx, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: batch, Project: "p", InputFileId: "file-input",
		Endpoint: "/v1/chat/completions", CompletionWindow: "24h", ExpiresAt: c.Now().Add(time.Hour).Unix(),
		Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING, RequestCounts: &vbatchv1.RequestCounts{}}}); err != nil {
		t.Fatalf("create batch: %v", err)
	}
	exists := func(id string) bool {
		if err := c.ConsistentRead(ctx); err != nil {
			t.Fatalf("consistent read: %v", err)
		}
		var ok bool
		c.fsm.View(func(s *fsm.State) { _, ok = s.Files[id] })
		return ok
	}
	waitFor(t, 20*time.Second, "the unused expired file to be deleted", func() bool { return !exists("file-unused") })
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
