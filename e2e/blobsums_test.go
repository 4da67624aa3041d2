package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBlobSumsRewrite runs `vbatch blobs rewrite-sums`, the step before a
// downgrade to a build that reads only sha256 block sums: refused while the
// coordinator runs, then every blob rewritten with sha256 sums in the
// older build's format, and the files read back byte for byte after a
// restart. `vbatch blobs verify` passes the sound store and finds a rotted
// blob.
func TestBlobSumsRewrite(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	c := StartCluster(t, 1, ClusterOptions{})
	c.WaitLeader(30 * time.Second)
	input := chatLines(300, "sim-model")
	f := upload(t, c.client(0, ""), "sums.jsonl", input)
	co := c.Coords[0]
	rewrite := func() (string, error) {
		return runBriefly(filepath.Join(Binaries(t), "vbatch"), "blobs", "rewrite-sums", "--data-dir", co.DataDir, "--format", "sha256")
	}
	if out, err := rewrite(); err == nil || !strings.Contains(out, "stop it first") {
		t.Fatalf("rewrite-sums on a running coordinator: %v\n%s", err, out)
	}
	co.Proc.Stop(5 * time.Second)
	verify := func() (string, error) {
		return runBriefly(filepath.Join(Binaries(t), "vbatch"), "blobs", "verify", "--data-dir", co.DataDir)
	}
	if out, err := verify(); err != nil || !strings.Contains(out, "0 corrupt, 0 unreadable") {
		t.Fatalf("blobs verify on a sound store: %v\n%s", err, out)
	}
	out, err := rewrite()
	if err != nil || !strings.Contains(out, "blobs now have sha256 block sums; 0 corrupt") {
		t.Fatalf("rewrite-sums: %v\n%s", err, out)
	}
	sums, err := filepath.Glob(filepath.Join(co.DataDir, "blobs", "blobs", "*", "*.sum"))
	if err != nil || len(sums) == 0 {
		t.Fatalf("no sidecars found: %v", err)
	}
	for _, p := range sums {
		if head := readHead(t, p, 8); head != "VBSUM\x00\x00\x01" {
			t.Fatalf("%s starts %q, not the sha256 sidecar magic", p, head)
		}
	}
	co.Restart(t)
	c.WaitLeader(30 * time.Second)
	if got := content(t, c.client(0, ""), f.ID); !bytes.Equal(got, input) {
		t.Fatal("content differs after the rewrite and a restart")
	}

	// A rotted byte: verify names the blob, quarantines it and exits 1.
	co.Proc.Stop(5 * time.Second)
	blobPath := strings.TrimSuffix(sums[0], ".sum")
	b, err := os.ReadFile(blobPath)
	if err != nil || len(b) == 0 {
		t.Fatalf("read %s: %v", blobPath, err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(blobPath, b, 0o640); err != nil {
		t.Fatal(err)
	}
	out, err = verify()
	if err == nil || !strings.Contains(out, "1 corrupt") || !strings.Contains(out, filepath.Base(blobPath)) {
		t.Fatalf("blobs verify on a rotted blob: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(co.DataDir, "blobs", "quarantine", filepath.Base(blobPath))); err != nil {
		t.Fatalf("rotted blob not in quarantine: %v", err)
	}
}

// readHead returns the first n bytes of the file at path.
func readHead(t *testing.T, path string, n int) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:min(n, len(b))])
}
