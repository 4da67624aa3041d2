// Package blob keeps file bytes on a coordinator's local disk, addressed by
// their sha256, and replicates them among coordinators over plain HTTP.
//
// Raft carries only metadata (vbatchv1.BlobRef); the bytes live here. Every
// blob is written through a temp file, fsynced and renamed into place, with a
// sidecar of per-block CRC32C sums so that every read, full or ranged, is
// verified before a byte of it is handed out (a full read checks the whole
// sha256 as well). A blob found corrupt is moved
// to quarantine/ so the background repair fetches a good copy from a peer.
//
// Layout under the store's directory:
//
//	blobs/ab/abcdef…       the bytes of blob abcdef…
//	blobs/ab/abcdef….sum   its sidecar of block sums (see verify.go)
//	tmp/                   writes in progress (emptied by Open)
//	quarantine/            blobs that failed verification
package blob

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// BlockSize is the unit of streaming: ingest reads and writes in blocks of
// this size.
const BlockSize = 1 << 20

// SumBlockSize is the unit of verification: the sidecar holds one sum per
// SumBlockSize bytes, so a ranged read (an agent reading its chunk of
// an input file) hashes little more than it returns. Sidecars record their
// block size, so blobs written with another one stay readable.
const SumBlockSize = 64 << 10

// Sentinel errors callers branch on; returned errors wrap them.
var (
	// ErrNotFound means the blob is not in the store (or no peer has it).
	ErrNotFound = errors.New("blob not found")
	// ErrCorrupt means stored bytes do not match their hash; the blob has
	// been moved to quarantine.
	ErrCorrupt = errors.New("blob corrupt")
	// ErrNoSpace means the disk filled while writing; nothing was kept.
	ErrNoSpace = errors.New("no space left for blob")
	// ErrMismatch means received content does not match the expected sha256
	// or size; nothing was kept.
	ErrMismatch = errors.New("blob content does not match expected hash or size")
	// ErrInvalidSHA means a name is not 64 lowercase hex digits.
	ErrInvalidSHA = errors.New("invalid blob sha256")
	// ErrOutOfRange means a ranged read asked for bytes past the blob's end.
	ErrOutOfRange = errors.New("blob range out of bounds")
)

// Store is a content-addressed blob store in one local directory. It is safe
// for concurrent use.
type Store struct {
	dir        string
	blobsDir   string
	tmpDir     string
	quarDir    string
	bufPool    sync.Pool                 // BlockSize buffers for ingest
	sumPool    sync.Pool                 // SumBlockSize buffers for verified reads
	wrapWriter func(io.Writer) io.Writer // tests inject write failures here
	// readFault, when set, is asked after each block read of a verified
	// reader (at the block's offset): tests inject read errors (EIO) here.
	readFault func(sha string, off int64) error

	// locks serialize, per fan-out directory (the sha's first byte), the
	// steps that change which blobs exist (commit, delete, quarantine,
	// touch) and the opening of a blob with its sidecar, so that a blob and
	// its sidecar appear and disappear together, GC never races a dedupe
	// hit, and a fan-out directory's creation is durable before anything
	// is placed in it. Blobs in other directories commit in parallel: one
	// slow fsync does not hold up every write and read of the store.
	locks [256]sync.Mutex
	// fanReady records, per fan-out directory, that it exists durably, so
	// a commit skips the mkdir; each entry is read and set under its
	// directory's lock. Fan-out directories are never removed.
	fanReady [256]bool
	// corrupt counts the copies moved to quarantine after failing
	// verification (Corruptions).
	corrupt atomic.Int64
}

// lockFor returns the lock of sha's fan-out directory (sha is normally a
// checked digest; anything else shares the first lock).
func (s *Store) lockFor(sha string) *sync.Mutex { return &s.locks[fanIndex(sha)] }

// fanIndex is the number of sha's fan-out directory (its first byte), or 0
// for anything that is not a digest.
func fanIndex(sha string) int {
	if len(sha) < 2 {
		return 0
	}
	b, err := strconv.ParseUint(sha[:2], 16, 8)
	if err != nil {
		return 0
	}
	return int(b)
}

// Open opens (creating if needed) the store rooted at dir and discards any
// write left in progress by an earlier process.
func Open(dir string) (*Store, error) {
	s := &Store{
		dir:      dir,
		blobsDir: filepath.Join(dir, "blobs"),
		tmpDir:   filepath.Join(dir, "tmp"),
		quarDir:  filepath.Join(dir, "quarantine"),
	}
	s.bufPool.New = func() any { b := make([]byte, BlockSize); return &b }
	s.sumPool.New = func() any { b := make([]byte, SumBlockSize); return &b }
	if err := os.RemoveAll(s.tmpDir); err != nil {
		return nil, fmt.Errorf("blob store %s: clear tmp: %w", dir, err)
	}
	for _, d := range []string{s.blobsDir, s.tmpDir, s.quarDir} {
		if err := mkdirDurable(d); err != nil {
			return nil, fmt.Errorf("blob store %s: %w", dir, err)
		}
	}
	if err := s.removeOrphanSums(); err != nil {
		return nil, fmt.Errorf("blob store %s: %w", dir, err)
	}
	return s, nil
}

// mkdirDurable creates d and any missing parents, and fsyncs the parent of
// each directory it created: a blob committed under a directory whose own
// entry was lost in a crash would be lost with it.
func mkdirDurable(d string) error {
	var created []string
	for p := filepath.Clean(d); ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		created = append(created, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(d, 0o750); err != nil {
		return err
	}
	for _, p := range created {
		if err := syncDir(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// Dir is the directory the store lives in.
func (s *Store) Dir() string { return s.dir }

// ValidSHA reports whether sha is 64 lowercase hex digits, the only form
// the store accepts as a blob name.
func ValidSHA(sha string) bool {
	if len(sha) != 64 {
		return false
	}
	for i := 0; i < len(sha); i++ {
		c := sha[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func checkSHA(sha string) error {
	if !ValidSHA(sha) {
		return fmt.Errorf("%w: %q", ErrInvalidSHA, sha)
	}
	return nil
}

func (s *Store) path(sha string) string    { return filepath.Join(s.blobsDir, sha[:2], sha) }
func (s *Store) sumPath(sha string) string { return s.path(sha) + ".sum" }

// Ingest streams r into the store and returns its ref. Memory use is one
// block whatever the size of r. The content ends only where r returns
// io.EOF: any other error, io.ErrUnexpectedEOF included (a multipart part
// cut short), fails the ingest and keeps nothing. If the blob already
// exists the new copy, just verified, replaces it (healing a copy that
// rotted on disk), so GC's grace starts over. A full disk yields an error
// wrapping ErrNoSpace.
func (s *Store) Ingest(r io.Reader) (*vbatchv1.BlobRef, error) {
	return s.ingest(r, nil, nil)
}

// IngestTee is Ingest that also writes every block, as soon as it is read,
// to each of tees: consumers such as a replica stream or a validator then
// work on the content while it is still arriving. A tee's write error fails
// the ingest, so tees that may fail on their own should absorb their
// errors (as a bufpipe.Pipe does once its reader gave up).
func (s *Store) IngestTee(r io.Reader, tees ...io.Writer) (*vbatchv1.BlobRef, error) {
	return s.ingest(r, nil, tees)
}

// IngestVerified is Ingest for content whose sha256 and size are known only
// once it has all been read, as with a replica streamed while its upload is
// still arriving: after the last byte it calls expect and keeps the blob
// only if the content matches (else ErrMismatch); an expect error keeps
// nothing and is returned.
func (s *Store) IngestVerified(r io.Reader, expect func() (sha string, size int64, err error)) (*vbatchv1.BlobRef, error) {
	return s.ingest(r, func(gotSHA string, gotSize int64) error {
		sha, size, err := expect()
		if err != nil {
			return fmt.Errorf("blob %s: %w", gotSHA, err)
		}
		return matches(gotSHA, gotSize, sha, size)
	}, nil)
}

// matches reports ErrMismatch unless the content read is what was expected.
func matches(gotSHA string, gotSize int64, wantSHA string, wantSize int64) error {
	if gotSHA != wantSHA || gotSize != wantSize {
		return fmt.Errorf("blob %s: received %d bytes hashing to %s, want %d bytes: %w",
			wantSHA, gotSize, gotSHA, wantSize, ErrMismatch)
	}
	return nil
}

// IngestExpected is Ingest for content whose sha256 and size are known in
// advance, as when receiving a replica: it reads at most size+1 bytes and
// keeps nothing unless the content matches (else ErrMismatch). A copy
// already here is replaced by the verified new one, not trusted for its
// size: it may have rotted since it was stored.
func (s *Store) IngestExpected(r io.Reader, sha string, size int64) (*vbatchv1.BlobRef, error) {
	if err := checkSHA(sha); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d: %w", sha, size, ErrMismatch)
	}
	return s.ingest(io.LimitReader(r, size+1), func(gotSHA string, gotSize int64) error {
		return matches(gotSHA, gotSize, sha, size)
	}, nil)
}

// ingest writes r to temp files (bytes and sidecar), and to tees as it goes,
// checks the whole content with check when given, and commits it.
func (s *Store) ingest(r io.Reader, check func(sha string, size int64) error, tees []io.Writer) (ref *vbatchv1.BlobRef, err error) {
	data, err := os.CreateTemp(s.tmpDir, "blob-*")
	if err != nil {
		return nil, fmt.Errorf("create temp blob: %w", mapNoSpace(err))
	}
	sum, err := os.CreateTemp(s.tmpDir, "sum-*")
	if err != nil {
		_ = data.Close()
		_ = os.Remove(data.Name())
		return nil, fmt.Errorf("create temp sidecar: %w", mapNoSpace(err))
	}
	defer func() {
		// On success both temps were renamed away and these are no-ops.
		_ = data.Close()
		_ = sum.Close()
		_ = os.Remove(data.Name())
		_ = os.Remove(sum.Name())
	}()

	bufp := s.bufPool.Get().(*[]byte)
	defer s.bufPool.Put(bufp)
	var w io.Writer = data
	if s.wrapWriter != nil {
		w = s.wrapWriter(data)
	}
	shaHex, size, err := writeBlocks(w, newSumWriter(sum, SumsCRC32C), r, *bufp, tees)
	if err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(shaHex, size); err != nil {
			return nil, err
		}
	}
	if err := syncClose(data); err != nil {
		return nil, fmt.Errorf("blob %s: %w", shaHex, err)
	}
	if err := syncClose(sum); err != nil {
		return nil, fmt.Errorf("blob %s sidecar: %w", shaHex, err)
	}
	if err := s.commit(shaHex, data.Name(), sum.Name()); err != nil {
		return nil, err
	}
	return &vbatchv1.BlobRef{Sha256: shaHex, Bytes: size}, nil
}

// writeBlocks copies r to w one block at a time, hashing the whole stream
// and each block, and writes the sidecar through sw; each block goes to the
// tees first. The content ends only at r's io.EOF; other read errors come
// back as they are; write errors are mapped so that ENOSPC wraps
// ErrNoSpace.
func writeBlocks(w io.Writer, sw *sumWriter, r io.Reader, buf []byte, tees []io.Writer) (string, int64, error) {
	whole := sha256.New()
	var size int64
	for {
		n, rerr := readBlock(r, buf)
		if n > 0 {
			block := buf[:n]
			for _, t := range tees {
				if _, err := t.Write(block); err != nil {
					return "", 0, fmt.Errorf("tee blob content at %d: %w", size, err)
				}
			}
			whole.Write(block)
			if _, err := w.Write(block); err != nil {
				return "", 0, fmt.Errorf("write blob at %d: %w", size, mapNoSpace(err))
			}
			for sub := block; len(sub) > 0; {
				k := min(len(sub), SumBlockSize)
				if err := sw.add(sub[:k]); err != nil {
					return "", 0, fmt.Errorf("write sidecar: %w", mapNoSpace(err))
				}
				sub = sub[k:]
			}
			size += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", 0, fmt.Errorf("read blob content at %d: %w", size, rerr)
		}
	}
	if err := sw.finish(size); err != nil {
		return "", 0, fmt.Errorf("write sidecar: %w", mapNoSpace(err))
	}
	return hex.EncodeToString(whole.Sum(nil)), size, nil
}

// readBlock fills buf from r as io.ReadFull does, but hands r's error on
// as it is: io.EOF only when r itself ended, never io.ErrUnexpectedEOF of
// its own making, so that a source that reports being cut short (as a
// multipart part or an HTTP body does) is not taken for a complete one.
func readBlock(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// mapNoSpace makes a disk-full error wrap ErrNoSpace (keeping the cause).
func mapNoSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

func syncClose(f *os.File) error {
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync %s: %w", f.Name(), mapNoSpace(err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), mapNoSpace(err))
	}
	return nil
}

// commit renames the sidecar and then the bytes into place and fsyncs the
// directory, so a blob visible after a crash always has its sidecar. A copy
// already there is replaced, not trusted: the new one was just verified
// and the old one may have rotted. Both describe the same content, so a
// reader that opens the pair under the lock, before or after, gets a
// consistent pair. If the directory fsync fails the renamed files are
// removed: a blob that may not survive a crash must not be counted as a
// replica.
func (s *Store) commit(sha, dataTmp, sumTmp string) error {
	l := s.lockFor(sha)
	l.Lock()
	defer l.Unlock()
	fan := filepath.Dir(s.path(sha))
	if i := fanIndex(sha); !s.fanReady[i] {
		// A directory that already exists may have been made by a process
		// that crashed before its entry was synced: sync it either way.
		if err := os.Mkdir(fan, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("blob %s: %w", sha, mapNoSpace(err))
		}
		if err := syncDir(s.blobsDir); err != nil {
			return fmt.Errorf("blob %s: %w", sha, err)
		}
		s.fanReady[i] = true
	}
	// Sidecar first, then the blob, then one directory sync makes both
	// durable. A crash in between can leave a blob without its sidecar;
	// reads treat that as corruption (quarantine, fetch from a peer), and
	// nothing refers to a blob before commit returns.
	if err := os.Rename(sumTmp, s.sumPath(sha)); err != nil {
		return fmt.Errorf("blob %s: place sidecar: %w", sha, mapNoSpace(err))
	}
	if err := os.Rename(dataTmp, s.path(sha)); err != nil {
		return fmt.Errorf("blob %s: place blob: %w", sha, mapNoSpace(err))
	}
	if err := syncDir(fan); err != nil {
		_ = os.Remove(s.path(sha))
		_ = os.Remove(s.sumPath(sha))
		return fmt.Errorf("blob %s: %w", sha, err)
	}
	return nil
}

// Hold reports the size of a blob that is here, and restarts its GC grace
// in the same locked step, so a GC pass cannot delete it between the look
// and the touch: a blob Hold reports stays at least the grace. ok is false
// if the blob is absent (or vanished before it could be touched).
func (s *Store) Hold(sha string) (size int64, ok bool) {
	if !ValidSHA(sha) {
		return 0, false
	}
	l := s.lockFor(sha)
	l.Lock()
	defer l.Unlock()
	fi, err := os.Stat(s.path(sha))
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	now := time.Now()
	if err := os.Chtimes(s.path(sha), now, now); err != nil {
		return 0, false
	}
	return fi.Size(), true
}

// syncDir fsyncs a directory, making the entries created, renamed or
// removed in it durable. It is a variable so that tests can watch it and
// make it fail.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// Has reports whether the blob is in the store.
func (s *Store) Has(sha string) bool {
	_, ok := s.Stat(sha)
	return ok
}

// Stat returns the blob's size, and whether it is in the store.
func (s *Store) Stat(sha string) (size int64, ok bool) {
	if !ValidSHA(sha) {
		return 0, false
	}
	fi, err := os.Stat(s.path(sha))
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	return fi.Size(), true
}

// Delete removes a blob and its sidecar. Deleting a missing blob is not an
// error. Readers that already opened it keep reading their open file.
func (s *Store) Delete(sha string) error {
	if err := checkSHA(sha); err != nil {
		return err
	}
	l := s.lockFor(sha)
	l.Lock()
	defer l.Unlock()
	return s.deleteLocked(sha)
}

func (s *Store) deleteLocked(sha string) error {
	if err := os.Remove(s.path(sha)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete blob %s: %w", sha, err)
	}
	if err := os.Remove(s.sumPath(sha)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete blob %s sidecar: %w", sha, err)
	}
	if err := syncDir(filepath.Dir(s.path(sha))); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete blob %s: %w", sha, err)
	}
	return nil
}

// deleteIfOlder deletes the blob if its mtime is before cutoff, deciding
// under the lock so a concurrent dedupe hit (which touches it) wins.
func (s *Store) deleteIfOlder(sha string, cutoff time.Time) (bool, error) {
	l := s.lockFor(sha)
	l.Lock()
	defer l.Unlock()
	fi, err := os.Stat(s.path(sha))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("stat blob %s: %w", sha, err)
	}
	if !fi.ModTime().Before(cutoff) {
		return false, nil
	}
	if err := s.deleteLocked(sha); err != nil {
		return false, err
	}
	return true, nil
}

// List returns the sha256 of every blob in the store, sorted.
func (s *Store) List() ([]string, error) {
	var out []string
	err := s.walk(func(sha string, fi fs.FileInfo) { out = append(out, sha) })
	return out, err
}

// Usage returns the bytes of blob content in the store and the blob count
// (sidecars, temp files and quarantine are not counted).
func (s *Store) Usage() (bytes int64, count int, err error) {
	err = s.walk(func(_ string, fi fs.FileInfo) {
		bytes += fi.Size()
		count++
	})
	return bytes, count, err
}

// walk calls fn for each blob file, in sha order.
func (s *Store) walk(fn func(sha string, fi fs.FileInfo)) error {
	fans, err := os.ReadDir(s.blobsDir)
	if err != nil {
		return fmt.Errorf("list blobs: %w", err)
	}
	for _, fan := range fans {
		if !fan.IsDir() || len(fan.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(s.blobsDir, fan.Name()))
		if err != nil {
			return fmt.Errorf("list blobs: %w", err)
		}
		for _, e := range ents {
			if !ValidSHA(e.Name()) || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted while listing
			}
			if err != nil {
				return fmt.Errorf("list blobs: %w", err)
			}
			fn(e.Name(), fi)
		}
	}
	return nil
}

// removeOrphanSums deletes sidecars whose blob is missing: a crash between
// the two renames of commit leaves one behind.
func (s *Store) removeOrphanSums() error {
	var orphans []string
	fans, err := os.ReadDir(s.blobsDir)
	if err != nil {
		return fmt.Errorf("scan blobs: %w", err)
	}
	for _, fan := range fans {
		ents, err := os.ReadDir(filepath.Join(s.blobsDir, fan.Name()))
		if err != nil {
			continue
		}
		for _, e := range ents {
			sha, ok := strings.CutSuffix(e.Name(), ".sum")
			if ok && ValidSHA(sha) && !s.Has(sha) {
				orphans = append(orphans, s.sumPath(sha))
			}
		}
	}
	sort.Strings(orphans)
	for _, p := range orphans {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove orphan sidecar: %w", err)
		}
	}
	return nil
}
