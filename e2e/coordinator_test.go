package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestCoordinatorCluster drives three real coordinators: replicated upload,
// validation errors, leader failover with files intact, and a full restart
// with every file and batch unchanged.
func TestCoordinatorCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	c := StartCluster(t, 3, ClusterOptions{Extra: []string{"--chunk-size", "100"}})
	leader := c.WaitLeader(20 * time.Second)
	follower := c.Running(leader)[0]
	other := c.Running(leader)[1]

	// Upload through a follower, read through another node byte for byte.
	input := chatLines(1000, "sim-model")
	f := upload(t, c.client(follower, ""), "good.jsonl", input)
	if f.Bytes != int64(len(input)) || f.Purpose != openai.FileObjectPurposeBatch {
		t.Fatalf("file object = %+v", f)
	}
	for _, i := range []int{other, leader} {
		if got := content(t, c.client(i, ""), f.ID); !bytes.Equal(got, input) {
			t.Fatalf("content through c%d differs: %d bytes vs %d", i+1, len(got), len(input))
		}
	}

	// A bad file fails its batch with 1-based line numbers.
	bad := []byte(`{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}
not json
{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}
{"custom_id":"c","method":"GET","url":"/v1/chat/completions","body":{"model":"m"}}
`)
	bf := upload(t, c.client(other, ""), "bad.jsonl", bad)
	ctx := context.Background()
	bb, err := c.client(other, "").Batches.New(ctx, openai.BatchNewParams{
		InputFileID: bf.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: "24h",
	})
	if err != nil {
		t.Fatalf("create bad batch: %v", err)
	}
	failed := waitBatch(t, c.client(follower, ""), bb.ID, 20*time.Second, statusIs(openai.BatchStatusFailed))
	wantLines := map[int64]bool{2: false, 3: false, 4: false}
	for _, e := range failed.Errors.Data {
		if _, ok := wantLines[e.Line]; ok {
			wantLines[e.Line] = true
		}
	}
	for line, seen := range wantLines {
		if !seen {
			t.Errorf("no error reported for line %d; errors: %+v", line, failed.Errors.Data)
		}
	}
	if failed.FailedAt == 0 {
		t.Errorf("failed_at not set")
	}

	// A valid file becomes in_progress with its total, waiting for agents.
	gb, err := c.client(leader, "").Batches.New(ctx, openai.BatchNewParams{
		InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: "24h",
		Metadata: map[string]string{"team": "e2e"},
	})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	started := waitBatch(t, c.client(follower, ""), gb.ID, 20*time.Second, statusIs(openai.BatchStatusInProgress))
	if started.RequestCounts.Total != 1000 || started.Model != "sim-model" {
		t.Fatalf("in_progress batch = total %d model %q", started.RequestCounts.Total, started.Model)
	}

	// Pagination over more than one page, and error objects, through the
	// openai-go client against the running cluster.
	for i := 0; i < 3; i++ {
		upload(t, c.client(other, ""), fmt.Sprintf("page-%d.jsonl", i), chatLines(2, "sim-model"))
	}
	cl := c.client(follower, "")
	consistent := option.WithHeader("X-Vbatch-Consistent", "true")
	var paged []string
	iter := cl.Files.ListAutoPaging(ctx, openai.FileListParams{Limit: openai.Int(2)}, consistent)
	for iter.Next() {
		paged = append(paged, iter.Current().ID)
	}
	if err := iter.Err(); err != nil || len(paged) != 5 {
		t.Fatalf("paged file listing: %d files, err %v", len(paged), err)
	}
	var batchIDs []string
	biter := cl.Batches.ListAutoPaging(ctx, openai.BatchListParams{Limit: openai.Int(1)}, consistent)
	for biter.Next() {
		batchIDs = append(batchIDs, biter.Current().ID)
	}
	// Both batches may share a created_at second, so only the set is fixed.
	if err := biter.Err(); err != nil || len(batchIDs) != 2 || !slices.Contains(batchIDs, gb.ID) || !slices.Contains(batchIDs, bb.ID) {
		t.Fatalf("paged batch listing %v, want %s and %s, err %v", batchIDs, gb.ID, bb.ID, err)
	}
	var apiErr *openai.Error
	if _, err := cl.Files.Get(ctx, "file-doesnotexist"); !errorsAs(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Fatalf("missing file: %v", err)
	}
	_, err = cl.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: "/v1/nope", CompletionWindow: "24h"})
	if !errorsAs(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Fatalf("bad endpoint: %v", err)
	}

	// Kill the leader: a new one takes over within seconds and both
	// survivors still serve the file.
	c.Coords[leader].Kill()
	killedAt := time.Now()
	newLeader := c.WaitLeader(10 * time.Second)
	t.Logf("new leader %s after %s", c.Coords[newLeader].ID, time.Since(killedAt))
	for _, i := range c.Running(-1) {
		if got := content(t, c.client(i, ""), f.ID); !bytes.Equal(got, input) {
			t.Fatalf("after failover, content through %s differs", c.Coords[i].ID)
		}
	}
	// Writes work on the new cluster.
	f2 := upload(t, c.client(c.Running(-1)[0], ""), "after.jsonl", chatLines(10, "sim-model"))

	// Restart the dead node, then all three, and find everything unchanged.
	c.Coords[leader].Restart(t)
	c.WaitLeader(20 * time.Second)
	before := snapshotObjects(t, c, c.Running(-1)[0])
	for _, co := range c.Coords {
		co.Proc.Stop(5 * time.Second)
	}
	for _, co := range c.Coords {
		co.Restart(t)
	}
	c.WaitLeader(30 * time.Second)
	for i := range c.Coords {
		after := snapshotObjects(t, c, i)
		if !bytes.Equal(before, after) {
			t.Fatalf("state through %s changed across restart:\nbefore %s\nafter  %s", c.Coords[i].ID, before, after)
		}
		if got := content(t, c.client(i, ""), f2.ID); len(got) == 0 {
			t.Fatalf("file %s empty after restart on %s", f2.ID, c.Coords[i].ID)
		}
	}
}

// snapshotObjects returns the JSON of every file and batch, read
// consistently through coordinator i.
func snapshotObjects(t *testing.T, c *Cluster, i int) []byte {
	t.Helper()
	consistent := option.WithHeader("X-Vbatch-Consistent", "true")
	var files, batches []json.RawMessage
	var body []byte
	WaitFor(t, 20*time.Second, "consistent listing", func() bool {
		files, batches = nil, nil
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cl := c.client(i, "")
		// Consistent reads: a node that just restarted may not have caught
		// up yet, and a default (local) read would show its stale state.
		fl, err := cl.Files.List(ctx, openai.FileListParams{}, consistent)
		if err != nil {
			return false
		}
		for _, f := range fl.Data {
			files = append(files, json.RawMessage(f.RawJSON()))
		}
		bl, err := cl.Batches.List(ctx, openai.BatchListParams{Limit: openai.Int(100)}, consistent)
		if err != nil {
			return false
		}
		for _, b := range bl.Data {
			batches = append(batches, json.RawMessage(b.RawJSON()))
		}
		body, err = json.Marshal(map[string]any{"files": files, "batches": batches})
		return err == nil
	})
	return body
}
