package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestMergeFileParts: the leader merges an old result file's parts into
// one blob held by a majority; every node then serves the same bytes from
// it, and a read that began on the parts goes on from the merged blob once
// the parts are gone.
func TestMergeFileParts(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.BatchCompactAfter = time.Nanosecond })
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var want bytes.Buffer
	var parts []*vbatchv1.BlobRef
	for i := range 3 {
		data := bytes.Repeat(fmt.Appendf(nil, "{\"custom_id\":\"req-%d\",\"part\":%d}\n", i, i), 20000)
		ref, err := leader.blobs.Ingest(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leader.replicate(ctx, ref.Sha256); err != nil {
			t.Fatal(err)
		}
		want.Write(data)
		parts = append(parts, ref)
	}
	file := &vbatchv1.File{Id: "file-out", Project: "p", Purpose: "batch_output", Filename: "b_output.jsonl",
		Bytes: int64(want.Len()), Lines: 60000, CreatedAt: 1, Parts: parts}
	if _, err := leader.Apply(ctx, &vbatchv1.CreateFile{File: file}); err != nil {
		t.Fatal(err)
	}
	reader := nodes[0]
	if reader == leader {
		reader = nodes[1]
	}
	waitFor(t, 10*time.Second, "the reader to know the file", func() bool { return reader.file("file-out") != nil })

	// A download starts on the parts and reads into the first.
	rc, err := reader.OpenFile(ctx, reader.file("file-out"))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}

	leader.mergeSweep(ctx, map[string]time.Time{})
	if got := testutil.ToFloat64(leader.metrics.FilesMerged); got != 1 {
		t.Fatalf("files merged %v, want 1", got)
	}
	var merged *vbatchv1.BlobRef
	waitFor(t, 10*time.Second, "every node to apply the merge", func() bool {
		for _, c := range nodes {
			f := c.file("file-out")
			if f == nil || len(f.Parts) != 1 {
				return false
			}
			merged = f.Parts[0]
		}
		return true
	})
	holders := 0
	for _, c := range nodes {
		if c.blobs.Has(merged.Sha256) {
			holders++
		}
	}
	if holders < 2 {
		t.Fatalf("merged blob on %d nodes, want a majority", holders)
	}
	// The parts go (as the GC does once their grace ends), under the read.
	for _, c := range nodes {
		for _, p := range parts {
			_ = c.blobs.Delete(p.Sha256)
		}
	}
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read on after the merge: %v", err)
	}
	if got := append(head, rest...); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read across the merge: %d bytes, want %d equal", len(got), want.Len())
	}
	// A new read on every node, from the merged blob.
	for _, c := range nodes {
		rc, err := c.OpenFile(ctx, c.file("file-out"))
		if err != nil {
			t.Fatalf("%s: open merged file: %v", c.cfg.NodeID, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%s: merged file read %d bytes (%v), want %d equal", c.cfg.NodeID, len(got), err, want.Len())
		}
	}
	// Nothing is left to merge, and the merge does not run twice.
	leader.mergeSweep(ctx, map[string]time.Time{})
	if got := testutil.ToFloat64(leader.metrics.FilesMerged); got != 1 {
		t.Fatalf("files merged %v after a second sweep, want 1", got)
	}
	var refs map[string]struct{}
	leader.fsm.View(func(st *fsm.State) { refs = fsm.ReferencedBlobs(st) })
	if _, ok := refs[parts[0].Sha256]; ok {
		t.Fatal("a merged part is still referenced")
	}
}

// TestMergeSkipsAFileThatFails: a file whose merge fails (a part lost on
// every node) is left for mergeRetryAfter, and newer files are merged.
func TestMergeSkipsAFileThatFails(t *testing.T) {
	nodes := startCluster(t, 1, func(c *Config) { c.BatchCompactAfter = time.Nanosecond })
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	create := func(id string, createdAt int64, lose bool) {
		t.Helper()
		var parts []*vbatchv1.BlobRef
		var size int64
		for i := range 2 {
			ref, err := leader.blobs.Ingest(bytes.NewReader(fmt.Appendf(nil, "%s part %d\n", id, i)))
			if err != nil {
				t.Fatal(err)
			}
			parts, size = append(parts, ref), size+ref.Bytes
		}
		f := &vbatchv1.File{Id: id, Project: "p", Purpose: "batch_output", Bytes: size, Lines: 2, CreatedAt: createdAt, Parts: parts}
		if _, err := leader.Apply(ctx, &vbatchv1.CreateFile{File: f}); err != nil {
			t.Fatal(err)
		}
		if lose {
			_ = leader.blobs.Delete(parts[1].Sha256)
		}
	}
	create("file-a", 1, true)
	create("file-b", 2, false)
	failed := map[string]time.Time{}
	leader.mergeSweep(ctx, failed)
	if f := leader.file("file-b"); len(f.Parts) != 1 {
		t.Fatalf("file-b has %d parts after a sweep: held up by file-a", len(f.Parts))
	}
	if _, ok := failed["file-a"]; !ok || len(leader.file("file-a").Parts) != 2 {
		t.Fatalf("file-a not left for later: failed %v", failed)
	}
}
