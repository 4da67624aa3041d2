package blob

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return s
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ingest stores b and checks the returned ref.
func ingest(t testing.TB, s *Store, b []byte) string {
	t.Helper()
	ref, err := s.Ingest(bytesReader(b))
	if err != nil {
		t.Fatalf("ingest: %v", err)
	}
	if ref.Sha256 != shaOf(b) || ref.Bytes != int64(len(b)) {
		t.Fatalf("ingest ref = %s/%d, want %s/%d", ref.Sha256, ref.Bytes, shaOf(b), len(b))
	}
	return ref.Sha256
}

// bytesReader hides any WriterTo/ReaderAt so the store sees a plain stream.
func bytesReader(b []byte) io.Reader { return &plainReader{b: b} }

type plainReader struct{ b []byte }

func (p *plainReader) Read(q []byte) (int, error) {
	if len(p.b) == 0 {
		return 0, io.EOF
	}
	n := copy(q, p.b)
	p.b = p.b[n:]
	return n, nil
}

// flipByte inverts one byte of a file on disk.
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// age sets a blob's mtime d in the past.
func age(t testing.TB, s *Store, sha string, d time.Duration) {
	t.Helper()
	old := time.Now().Add(-d)
	if err := os.Chtimes(s.path(sha), old, old); err != nil {
		t.Fatal(err)
	}
}

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// allFiles lists every regular file under dir.
func allFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sha256Sidecar is the sidecar a build before CRC32C sums wrote for b, with
// one sha256 per blockSize bytes.
func sha256Sidecar(b []byte, blockSize int) []byte {
	var side bytes.Buffer
	var h [sumHeaderLen]byte
	copy(h[:8], sumMagicSHA256)
	binary.BigEndian.PutUint64(h[8:16], uint64(blockSize))
	binary.BigEndian.PutUint64(h[16:24], uint64(len(b)))
	side.Write(h[:])
	for rest := b; len(rest) > 0; {
		k := min(len(rest), blockSize)
		d := sha256.Sum256(rest[:k])
		side.Write(d[:])
		rest = rest[k:]
	}
	return side.Bytes()
}
