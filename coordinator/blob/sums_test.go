package blob

import (
	"bytes"
	"os"
	"testing"
)

// TestRewriteSums: sidecars rewritten as sha256 are byte for byte what an
// older build writes (so it can read the store after a downgrade), read
// back here, and turn into CRC32C again; a corrupt blob is skipped and
// quarantined, never given sums of its bad bytes.
func TestRewriteSums(t *testing.T) {
	s := newStore(t)
	blobs := map[string][]byte{}
	for i, n := range []int{0, 10, SumBlockSize, 3*SumBlockSize + 7, 2*BlockSize + 1} {
		b := randBytes(n, uint64(70+i))
		blobs[ingest(t, s, b)] = b
	}
	bad := randBytes(2*SumBlockSize, 79)
	badSHA := ingest(t, s, bad)
	flipByte(t, s.path(badSHA), SumBlockSize+3)

	done, skipped, err := s.RewriteSums(SumsSHA256)
	if err != nil || done != len(blobs) || skipped != 1 {
		t.Fatalf("RewriteSums(sha256) = %d, %d, %v; want %d, 1", done, skipped, err, len(blobs))
	}
	if !s.Quarantined(badSHA) {
		t.Fatal("the corrupt blob was not quarantined")
	}
	for sha, b := range blobs {
		side, err := os.ReadFile(s.sumPath(sha))
		if err != nil || !bytes.Equal(side, sha256Sidecar(b, SumBlockSize)) {
			t.Fatalf("blob of %d bytes: sidecar is not the older build's (%v)", len(b), err)
		}
		if got, err := readAll(s, sha); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read after rewrite to sha256: %v", err)
		}
	}

	if done, skipped, err := s.RewriteSums(SumsCRC32C); err != nil || done != len(blobs) || skipped != 0 {
		t.Fatalf("RewriteSums(crc32c) = %d, %d, %v", done, skipped, err)
	}
	for sha, b := range blobs {
		side, err := os.ReadFile(s.sumPath(sha))
		blocks := (len(b) + SumBlockSize - 1) / SumBlockSize
		if err != nil || string(side[:8]) != sumMagicCRC32C || len(side) != sumHeaderLen+4*blocks {
			t.Fatalf("blob of %d bytes: sidecar is not CRC32C (%v)", len(b), err)
		}
		if got, err := readAll(s, sha); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read after rewrite to crc32c: %v", err)
		}
	}
}

func TestParseSumFormat(t *testing.T) {
	for _, f := range []SumFormat{SumsCRC32C, SumsSHA256} {
		if got, err := ParseSumFormat(f.String()); err != nil || got != f {
			t.Fatalf("ParseSumFormat(%q) = %v, %v", f, got, err)
		}
	}
	if _, err := ParseSumFormat("md5"); err == nil {
		t.Fatal("md5 accepted")
	}
}
