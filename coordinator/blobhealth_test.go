package coordinator

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestScrubRepairsRottedCopy: a copy that rots on one coordinator's disk,
// which nobody reads, is found by the scrub, quarantined and fetched again
// from a peer, and the node's metrics say so.
func TestScrubRepairsRottedCopy(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.BlobScrubInterval = 100 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	content := strings.Repeat("a line nobody reads again\n", 10000)
	ref, _, err := nodes[0].StoreUpload(ctx, strings.NewReader(content))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	file := &vbatchv1.File{Id: "file-rot", Project: "p", Bytes: ref.Bytes, Sha256: ref.Sha256, CreatedAt: 1, Parts: []*vbatchv1.BlobRef{ref}}
	if _, err := nodes[0].Apply(ctx, &vbatchv1.CreateFile{File: file}); err != nil {
		t.Fatalf("create file: %v", err)
	}
	victim := nodes[2]
	waitFor(t, 20*time.Second, "every node to hold the file's blob", func() bool {
		for _, c := range nodes {
			if !c.blobs.Has(ref.Sha256) {
				return false
			}
		}
		return true
	})

	path := filepath.Join(victim.blobs.Dir(), "blobs", ref.Sha256[:2], ref.Sha256)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open the victim's copy: %v", err)
	}
	if _, err := f.WriteAt([]byte{'#'}, int64(len(content)/2)); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	waitFor(t, 20*time.Second, "the scrub to find the rotted copy and repair to replace it", func() bool {
		return victim.blobs.Corruptions() >= 1 && victim.blobs.Has(ref.Sha256)
	})
	r, err := victim.blobs.Open(ref.Sha256)
	if err != nil {
		t.Fatalf("open repaired copy: %v", err)
	}
	got, err := io.ReadAll(r)
	_ = r.Close()
	if err != nil || string(got) != content {
		t.Fatalf("repaired copy: %d bytes, err %v; want the original %d bytes", len(got), err, len(content))
	}
	if v := gauge(t, victim, "vbatch_blob_corrupt_total"); v < 1 {
		t.Errorf("vbatch_blob_corrupt_total = %v, want at least 1", v)
	}
	if v := gauge(t, nodes[0], "vbatch_blob_corrupt_total"); v != 0 {
		t.Errorf("vbatch_blob_corrupt_total on a healthy node = %v, want 0", v)
	}
	waitFor(t, 20*time.Second, "a scrub pass to end and a repair pass to count nothing missing", func() bool {
		return gauge(t, victim, "vbatch_blob_scrub_last_pass_timestamp_seconds") > 0 &&
			gauge(t, victim, "vbatch_blobs_missing") == 0 &&
			gauge(t, victim, "vbatch_blob_stored_bytes") >= float64(len(content))
	})
}

// gauge reads one unlabelled metric from a coordinator's registry; -1 if
// it is absent.
func gauge(t *testing.T, c *Coordinator, name string) float64 {
	t.Helper()
	mfs, err := c.registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		default:
			return m.GetGauge().GetValue()
		}
	}
	return -1
}
