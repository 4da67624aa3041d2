package coordinator

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestReadHealsCorruptCopies: a file read through a coordinator whose
// copies of its parts rotted (one caught when opened, one part way
// through) comes back whole and byte for byte: each bad copy is fetched
// again from a peer and the read goes on from the same byte.
func TestReadHealsCorruptCopies(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	first := strings.Repeat("the first part of the file\n", 4000)   // ~108 KB
	second := strings.Repeat("and the second part, longer\n", 8000) // ~224 KB
	var parts []*vbatchv1.BlobRef
	for _, content := range []string{first, second} {
		ref, _, err := nodes[0].StoreUpload(ctx, strings.NewReader(content))
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		parts = append(parts, ref)
	}
	f := &vbatchv1.File{Id: "file-heal", Project: "p", Purpose: "batch_output", Bytes: int64(len(first) + len(second)),
		CreatedAt: 1, Parts: parts}
	if _, err := nodes[0].Apply(ctx, &vbatchv1.CreateFile{File: f}); err != nil {
		t.Fatalf("create file: %v", err)
	}
	server := nodes[1]
	waitFor(t, 20*time.Second, "every node to hold both parts, and the server the file", func() bool {
		for _, c := range nodes {
			for _, p := range parts {
				if !c.blobs.Has(p.Sha256) {
					return false
				}
			}
		}
		return server.file(f.Id) != nil
	})
	blobPath := func(sha string) string {
		return filepath.Join(server.blobs.Dir(), "blobs", sha[:2], sha)
	}
	// The first part's sidecar is gone (caught at open); the second part's
	// bytes rot past its first verified block (caught part way).
	if err := os.Remove(blobPath(parts[0].Sha256) + ".sum"); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(blobPath(parts[1].Sha256), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt([]byte{'#'}, 150_000); err != nil {
		t.Fatal(err)
	}
	_ = fh.Close()

	rc, err := server.OpenFile(ctx, server.file(f.Id))
	if err != nil {
		t.Fatalf("open file: %v", err)
	}
	got, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		t.Fatalf("read file: %v (after %d bytes)", err, len(got))
	}
	if !bytes.Equal(got, []byte(first+second)) {
		t.Fatalf("read %d bytes that differ from the file's %d", len(got), len(first)+len(second))
	}
	if n := server.blobs.Corruptions(); n != 2 {
		t.Errorf("corrupt copies found = %d, want 2", n)
	}
}
