package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestBlobGCWaitsForCurrentState: GC deletes unreferenced blobs on a node
// whose state is current, but a coordinator restarted alone holds only its
// last snapshot (here none: an empty state) until a leader tells it what
// committed, and must not judge blobs against that state. The committed
// file's blob stays on disk well past the grace.
func TestBlobGCWaitsForCurrentState(t *testing.T) {
	const grace = 500 * time.Millisecond
	nodes := startCluster(t, 3, func(c *Config) { c.Timing.BlobGCGrace = grace })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ref, _, err := nodes[0].StoreUpload(ctx, strings.NewReader("a committed file\n"))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	file := &vbatchv1.File{Id: "file-gc", Project: "p", Bytes: ref.Bytes, Sha256: ref.Sha256, CreatedAt: 1, Parts: []*vbatchv1.BlobRef{ref}}
	if _, err := nodes[0].Apply(ctx, &vbatchv1.CreateFile{File: file}); err != nil {
		t.Fatalf("create file: %v", err)
	}
	// On a current state GC works: an unreferenced blob goes once past the
	// grace, and repair brings the file's blob onto every node.
	orphan, err := nodes[1].blobs.Ingest(strings.NewReader("nothing refers to this\n"))
	if err != nil {
		t.Fatalf("ingest orphan: %v", err)
	}
	waitFor(t, 20*time.Second, "GC to delete the unreferenced blob and repair to copy the file's", func() bool {
		for _, c := range nodes {
			if !c.blobs.Has(ref.Sha256) {
				return false
			}
		}
		return !nodes[1].blobs.Has(orphan.Sha256)
	})

	for _, c := range nodes[1:] {
		if err := c.Close(); err != nil {
			t.Logf("close %s: %v", c.cfg.NodeID, err)
		}
	}
	// Nothing touches the blob from here on (no peer asks for it).
	untouched := time.Now()
	alone := restartNode(t, nodes[0])
	skipped := func() float64 { return testutil.ToFloat64(alone.metrics.BlobGCSkipped) }
	waitFor(t, 20*time.Second, "two GC passes on the node without a leader, past the grace", func() bool {
		return skipped() >= 2 && time.Since(untouched) > 2*grace
	})
	if !alone.blobs.Has(ref.Sha256) {
		t.Fatal("GC on a node without a leader deleted the blob of a committed file")
	}
}
