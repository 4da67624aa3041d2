package blob

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestIngestRoundTrip(t *testing.T) {
	s := newStore(t)
	sizes := []int{0, 1, 4095, BlockSize - 1, BlockSize, BlockSize + 1, 3*BlockSize + 17}
	var want []string
	var total int64
	for i, n := range sizes {
		b := randBytes(n, uint64(i))
		sha := ingest(t, s, b)
		want = append(want, sha)
		total += int64(n)
		if size, ok := s.Stat(sha); !ok || size != int64(n) {
			t.Fatalf("Stat(%d bytes) = %d, %v", n, size, ok)
		}
		if !s.Has(sha) {
			t.Fatalf("Has(%d bytes) = false", n)
		}
		rc, err := s.Open(sha)
		if err != nil {
			t.Fatalf("open %d bytes: %v", n, err)
		}
		got, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read back %d bytes: got %d bytes, err %v", n, len(got), err)
		}
	}
	slices.Sort(want)
	list, err := s.List()
	if err != nil || !slices.Equal(list, want) {
		t.Fatalf("List = %v, %v; want %v", list, err, want)
	}
	bytesUsed, count, err := s.Usage()
	if err != nil || bytesUsed != total || count != len(sizes) {
		t.Fatalf("Usage = %d, %d, %v; want %d, %d", bytesUsed, count, err, total, len(sizes))
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("tmp not empty after ingests: %v", left)
	}
	// Layout: two-char fan-out with a sidecar beside each blob.
	sha := want[0]
	for _, p := range []string{filepath.Join(s.Dir(), "blobs", sha[:2], sha), filepath.Join(s.Dir(), "blobs", sha[:2], sha+".sum")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("expected %s: %v", p, err)
		}
	}
}

func TestIngestDedupe(t *testing.T) {
	s := newStore(t)
	b := randBytes(BlockSize+5, 1)
	sha := ingest(t, s, b)
	age(t, s, sha, time.Hour)
	if again := ingest(t, s, b); again != sha {
		t.Fatalf("second ingest sha %s, want %s", again, sha)
	}
	if _, count, _ := s.Usage(); count != 1 {
		t.Fatalf("count = %d after dedupe, want 1", count)
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("tmp not empty after dedupe: %v", left)
	}
	fi, err := os.Stat(s.path(sha))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(fi.ModTime()) > time.Minute {
		t.Fatalf("dedupe hit did not refresh mtime (%v old); GC could delete a blob just uploaded", time.Since(fi.ModTime()))
	}
}

func TestIngestExpected(t *testing.T) {
	s := newStore(t)
	b := randBytes(2*BlockSize+3, 2)
	sha := shaOf(b)
	other := shaOf([]byte("other"))

	cases := []struct {
		name string
		body []byte
		sha  string
		size int64
	}{
		{"wrong sha", b, other, int64(len(b))},
		{"short body", b[:len(b)-1], sha, int64(len(b))},
		{"long body", append(slices.Clone(b), 'x'), sha, int64(len(b))},
		{"wrong size", b, sha, int64(len(b) - 1)},
	}
	for _, c := range cases {
		_, err := s.IngestExpected(bytesReader(c.body), c.sha, c.size)
		if !errors.Is(err, ErrMismatch) {
			t.Fatalf("%s: err = %v, want ErrMismatch", c.name, err)
		}
		if files := allFiles(t, s.Dir()); len(files) != 0 {
			t.Fatalf("%s: files kept after mismatch: %v", c.name, files)
		}
	}
	if _, err := s.IngestExpected(bytesReader(b), "ABC", 3); !errors.Is(err, ErrInvalidSHA) {
		t.Fatalf("bad sha: err = %v", err)
	}
	ref, err := s.IngestExpected(bytesReader(b), sha, int64(len(b)))
	if err != nil || ref.Sha256 != sha || ref.Bytes != int64(len(b)) {
		t.Fatalf("IngestExpected = %v, %v", ref, err)
	}
	// Already present: the copy there is not trusted for its size, so the
	// body is read, and one that fails leaves that copy as it was.
	if _, err := s.IngestExpected(failReader{}, sha, int64(len(b))); err == nil {
		t.Fatal("IngestExpected of a present blob with a failing body succeeded")
	}
	if got, err := readAll(s, sha); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("present copy after a failed re-ingest: %v", err)
	}
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errors.New("must not be read") }

func TestOpenErrors(t *testing.T) {
	s := newStore(t)
	missing := shaOf([]byte("missing"))
	if _, err := s.Open(missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open(missing) err = %v, want ErrNotFound", err)
	}
	if _, err := s.OpenRange(missing, 0, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenRange(missing) err = %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "../etc/passwd", strings.Repeat("A", 64), strings.Repeat("g", 64), strings.Repeat("a", 63)} {
		if _, err := s.Open(bad); !errors.Is(err, ErrInvalidSHA) {
			t.Fatalf("Open(%q) err = %v, want ErrInvalidSHA", bad, err)
		}
		if s.Has(bad) {
			t.Fatalf("Has(%q) = true", bad)
		}
	}
}

func TestReopenClearsTmpAndOrphans(t *testing.T) {
	s := newStore(t)
	sha := ingest(t, s, []byte("kept"))
	if err := os.WriteFile(filepath.Join(s.tmpDir, "blob-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	orphan := shaOf([]byte("orphan"))
	if err := os.MkdirAll(filepath.Dir(s.sumPath(orphan)), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.sumPath(orphan), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if left := dirEntries(t, s2.tmpDir); len(left) != 0 {
		t.Fatalf("tmp not cleared at Open: %v", left)
	}
	if _, err := os.Stat(s2.sumPath(orphan)); !os.IsNotExist(err) {
		t.Fatalf("orphan sidecar kept: %v", err)
	}
	if !s2.Has(sha) {
		t.Fatal("blob lost across reopen")
	}
}

func TestDelete(t *testing.T) {
	s := newStore(t)
	sha := ingest(t, s, []byte("gone soon"))
	if err := s.Delete(sha); err != nil {
		t.Fatal(err)
	}
	if s.Has(sha) {
		t.Fatal("Has after Delete")
	}
	if _, err := os.Stat(s.sumPath(sha)); !os.IsNotExist(err) {
		t.Fatalf("sidecar kept after Delete: %v", err)
	}
	if err := s.Delete(sha); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

// enospcWriter accepts limit bytes, then fails as a full disk does.
type enospcWriter struct {
	w     io.Writer
	limit int
}

func (e *enospcWriter) Write(p []byte) (int, error) {
	if len(p) > e.limit {
		n, _ := e.w.Write(p[:e.limit])
		e.limit = 0
		return n, &os.PathError{Op: "write", Path: "blob", Err: syscall.ENOSPC}
	}
	e.limit -= len(p)
	return e.w.Write(p)
}

func TestIngestNoSpace(t *testing.T) {
	s := newStore(t)
	s.wrapWriter = func(w io.Writer) io.Writer { return &enospcWriter{w: w, limit: BlockSize + 100} }
	_, err := s.Ingest(bytesReader(randBytes(3*BlockSize, 3)))
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ErrNoSpace wrapping ENOSPC", err)
	}
	if files := allFiles(t, s.Dir()); len(files) != 0 {
		t.Fatalf("partial files kept after ENOSPC: %v", files)
	}
}

func TestMapNoSpace(t *testing.T) {
	if err := mapNoSpace(&os.PathError{Op: "fsync", Path: "x", Err: syscall.ENOSPC}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("ENOSPC not mapped: %v", err)
	}
	if err := mapNoSpace(syscall.EIO); errors.Is(err, ErrNoSpace) {
		t.Fatalf("EIO mapped to ErrNoSpace: %v", err)
	}
}

func TestIngestReadError(t *testing.T) {
	s := newStore(t)
	boom := errors.New("client went away")
	_, err := s.Ingest(io.MultiReader(bytesReader(randBytes(BlockSize+1, 4)), errReader{boom}))
	if !errors.Is(err, boom) || errors.Is(err, ErrNoSpace) {
		t.Fatalf("err = %v, want the reader's error", err)
	}
	if files := allFiles(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files kept after read error: %v", files)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// cutShortReader yields b, then io.ErrUnexpectedEOF, as a multipart part or
// an HTTP body does when the sender stopped early.
type cutShortReader struct{ b []byte }

func (c *cutShortReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, c.b)
	c.b = c.b[n:]
	return n, nil
}

// TestIngestSourceCutShort: a source that reports being cut short is not
// content that ended; whatever its length against the block size, nothing
// is kept.
func TestIngestSourceCutShort(t *testing.T) {
	s := newStore(t)
	for _, n := range []int{0, 10, BlockSize, BlockSize + 10} {
		_, err := s.Ingest(&cutShortReader{b: randBytes(n, uint64(n))})
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%d bytes then ErrUnexpectedEOF: err = %v", n, err)
		}
		if files := allFiles(t, s.Dir()); len(files) != 0 {
			t.Fatalf("%d bytes then ErrUnexpectedEOF: kept %v", n, files)
		}
	}
	// A multipart file part whose body ends without its delimiter.
	body := "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\ntruncated content"
	part, err := multipart.NewReader(strings.NewReader(body), "b").NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if ref, err := s.Ingest(part); err == nil {
		t.Fatalf("truncated multipart part stored as %v", ref)
	}
	if files := allFiles(t, s.Dir()); len(files) != 0 {
		t.Fatalf("truncated multipart part: kept %v", files)
	}
}

// TestIngestReplacesRottedCopy: a copy that rotted on disk (same size,
// other bytes, in the blob or its sidecar) is replaced by a verified
// re-upload or replica, not kept for its size.
func TestIngestReplacesRottedCopy(t *testing.T) {
	s := newStore(t)
	b := randBytes(2*BlockSize+9, 5)
	for _, rot := range []string{"blob", "sidecar"} {
		for _, via := range []string{"Ingest", "IngestExpected"} {
			sha := ingest(t, s, b)
			path := s.path(sha)
			if rot == "sidecar" {
				path = s.sumPath(sha)
			}
			flipByte(t, path, sumHeaderLen+3)
			if via == "Ingest" {
				ingest(t, s, b)
			} else if _, err := s.IngestExpected(bytesReader(b), sha, int64(len(b))); err != nil {
				t.Fatal(err)
			}
			if got, err := readAll(s, sha); err != nil || !bytes.Equal(got, b) {
				t.Fatalf("rotted %s, then %s: read back: %v", rot, via, err)
			}
			if left := dirEntries(t, s.tmpDir); len(left) != 0 {
				t.Fatalf("tmp not empty: %v", left)
			}
			if err := s.Delete(sha); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// watchSyncDir replaces syncDir for the test: fail, when set, decides
// which directories fail; the returned func lists the directories synced.
func watchSyncDir(t *testing.T, fail func(dir string) bool) func() []string {
	t.Helper()
	var mu sync.Mutex
	var synced []string
	orig := syncDir
	syncDir = func(dir string) error {
		if fail != nil && fail(dir) {
			return fmt.Errorf("fsync dir %s: %w", dir, syscall.EIO)
		}
		mu.Lock()
		synced = append(synced, filepath.Clean(dir))
		mu.Unlock()
		return orig(dir)
	}
	t.Cleanup(func() { syncDir = orig })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(synced)
	}
}

// TestCommitSyncsExistingFanDir: a fan-out directory found already there
// (made by a process that may have crashed before syncing it) is synced
// into blobs/ before a blob is placed in it.
func TestCommitSyncsExistingFanDir(t *testing.T) {
	s := newStore(t)
	b := []byte("in a fan-out dir someone else made")
	sha := shaOf(b)
	if err := os.Mkdir(filepath.Dir(s.path(sha)), 0o750); err != nil {
		t.Fatal(err)
	}
	synced := watchSyncDir(t, nil)
	ingest(t, s, b)
	if !slices.Contains(synced(), filepath.Clean(s.blobsDir)) {
		t.Fatalf("blobs/ not synced for an existing fan-out dir; synced %v", synced())
	}
}

// TestCommitDirSyncFailureKeepsNothing: a blob whose directory entry could
// not be made durable is removed, not left to be counted as a replica.
func TestCommitDirSyncFailureKeepsNothing(t *testing.T) {
	s := newStore(t)
	b := randBytes(BlockSize+1, 6)
	sha := shaOf(b)
	fan := filepath.Clean(filepath.Dir(s.path(sha)))
	watchSyncDir(t, func(dir string) bool { return filepath.Clean(dir) == fan })
	if _, err := s.Ingest(bytesReader(b)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("err = %v, want the fsync's EIO", err)
	}
	if s.Has(sha) {
		t.Fatal("blob visible after its directory fsync failed")
	}
	if files := allFiles(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files kept: %v", files)
	}
}

// TestOpenSyncsCreatedDirs: the directories Open creates are synced into
// their parents, the store's own directory included.
func TestOpenSyncsCreatedDirs(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "a", "store")
	synced := watchSyncDir(t, nil)
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	for _, parent := range []string{root, filepath.Join(root, "a"), dir} {
		if !slices.Contains(synced(), parent) {
			t.Fatalf("%s not synced after Open created entries in it; synced %v", parent, synced())
		}
	}
}
