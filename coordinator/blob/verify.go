package blob

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// The sidecar <sha>.sum is a 24-byte header (magic, block size, blob size,
// the two sizes big-endian uint64) followed by one sum per block in order,
// the last block possibly short. It lets a ranged read verify just the
// blocks it touches. Sidecars are written with CRC32C sums (4 bytes,
// big-endian; hardware-computed, about ten times cheaper than sha256):
// they guard a copy that was checked against its sha256 name when it was
// stored against later changes on disk. Sidecars of earlier builds hold
// sha256 sums (32 bytes) and are read as they are.
const (
	sumMagicSHA256 = "VBSUM\x00\x00\x01"
	sumMagicCRC32C = "VBSUM\x00\x00\x02"
	sumHeaderLen   = 24
	maxBlockSize   = 64 << 20
)

// castagnoli is the CRC32C table (SSE4.2 and ARMv8 compute it in hardware).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SumFormat names the kind of block sums a sidecar holds.
type SumFormat int

const (
	// SumsCRC32C is what this build writes.
	SumsCRC32C SumFormat = iota
	// SumsSHA256 is what builds before CRC32C sums wrote, and the only
	// format they read.
	SumsSHA256
)

// String returns the format's name as the command line spells it.
func (f SumFormat) String() string {
	if f == SumsSHA256 {
		return "sha256"
	}
	return "crc32c"
}

// size is the bytes of one block sum in the format.
func (f SumFormat) size() int64 {
	if f == SumsSHA256 {
		return sha256.Size
	}
	return crc32.Size
}

// appendSum appends block's sum in the format to dst, as the sidecar
// stores it (CRC32C big-endian).
func (f SumFormat) appendSum(dst, block []byte) []byte {
	if f == SumsSHA256 {
		d := sha256.Sum256(block)
		return append(dst, d[:]...)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(block, castagnoli))
}

// ParseSumFormat reads a format name ("crc32c" or "sha256").
func ParseSumFormat(name string) (SumFormat, error) {
	switch name {
	case "crc32c":
		return SumsCRC32C, nil
	case "sha256":
		return SumsSHA256, nil
	}
	return 0, fmt.Errorf("unknown block sum format %q (crc32c or sha256)", name)
}

// sumWriter streams block sums into a sidecar temp file, then writes the
// header once the size is known.
type sumWriter struct {
	f      *os.File
	bw     *bufio.Writer
	n      int64
	format SumFormat
}

func newSumWriter(f *os.File, format SumFormat) *sumWriter {
	sw := &sumWriter{f: f, bw: bufio.NewWriterSize(f, 4096), format: format}
	_, _ = sw.bw.Write(make([]byte, sumHeaderLen)) // placeholder; cannot fail before Flush
	return sw
}

// add appends the sum of the next block.
func (sw *sumWriter) add(block []byte) error {
	var d [sha256.Size]byte
	_, err := sw.bw.Write(sw.format.appendSum(d[:0], block))
	sw.n++
	return err
}

func (sw *sumWriter) finish(size int64) error {
	if err := sw.bw.Flush(); err != nil {
		return err
	}
	var h [sumHeaderLen]byte
	copy(h[:8], sumMagicCRC32C)
	if sw.format == SumsSHA256 {
		copy(h[:8], sumMagicSHA256)
	}
	binary.BigEndian.PutUint64(h[8:16], SumBlockSize)
	binary.BigEndian.PutUint64(h[16:24], uint64(size))
	_, err := sw.f.WriteAt(h[:], 0)
	return err
}

// Open returns a reader of the whole blob. Each block is checked against
// the sidecar before any of it is returned, and the whole-file sha256 is
// checked before the last block is returned. A mismatch (found by Open or
// by Read) is an error wrapping ErrCorrupt, and the blob is moved to
// quarantine. A missing blob is ErrNotFound.
func (s *Store) Open(sha string) (io.ReadCloser, error) {
	return s.open(sha, 0, -1)
}

// OpenRange returns a reader of length bytes from offset, verifying every
// block it touches against the sidecar, with the same errors as Open. A
// range past the end of the blob is ErrOutOfRange.
func (s *Store) OpenRange(sha string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("blob %s range [%d,+%d): %w", sha, offset, length, ErrOutOfRange)
	}
	return s.open(sha, offset, length)
}

// open opens a verified reader; length < 0 means the whole blob, whose
// whole-file hash is then checked as well.
func (s *Store) open(sha string, offset, length int64) (io.ReadCloser, error) {
	if err := checkSHA(sha); err != nil {
		return nil, err
	}
	// Open both files under the lock so they are a matching pair even if
	// a replacement is being committed.
	l := s.lockFor(sha)
	l.Lock()
	f, err := os.Open(s.path(sha))
	var sum *os.File
	var sumErr error
	if err == nil {
		sum, sumErr = os.Open(s.sumPath(sha))
	}
	l.Unlock()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("blob %s: %w", sha, ErrNotFound)
		}
		return nil, fmt.Errorf("open blob %s: %w", sha, err)
	}
	r := &reader{s: s, sha: sha, f: f, sum: sum}
	if sumErr != nil {
		if !errors.Is(sumErr, fs.ErrNotExist) {
			_ = f.Close()
			return nil, fmt.Errorf("open blob %s sidecar: %w", sha, sumErr)
		}
		err := r.corrupt("sidecar missing")
		_ = r.Close()
		return nil, err
	}
	if err := r.init(offset, length); err != nil {
		_ = r.Close()
		return nil, err
	}
	return r, nil
}

// reader hands out verified bytes of one blob, a block at a time.
type reader struct {
	s        *Store
	sha      string
	f, sum   *os.File
	size     int64     // blob size per the sidecar
	bs       int64     // block size per the sidecar
	format   SumFormat // of the sidecar's block sums
	pos, end int64     // next byte to return, end of the range
	whole    hash.Hash
	bufp     *[]byte
	pending  []byte // verified bytes of the current block not yet returned
	err      error  // sticky
}

func (r *reader) init(offset, length int64) error {
	var h [sumHeaderLen]byte
	if _, err := r.sum.ReadAt(h[:], 0); err != nil {
		return r.corrupt(fmt.Sprintf("sidecar header: %v", err))
	}
	r.bs = int64(binary.BigEndian.Uint64(h[8:16]))
	r.size = int64(binary.BigEndian.Uint64(h[16:24]))
	known := true
	switch string(h[:8]) {
	case sumMagicCRC32C:
		r.format = SumsCRC32C
	case sumMagicSHA256:
		r.format = SumsSHA256
	default:
		known = false
	}
	if !known || r.bs <= 0 || r.bs > maxBlockSize || r.size < 0 {
		return r.corrupt("sidecar header invalid")
	}
	blocks := (r.size + r.bs - 1) / r.bs
	if fi, err := r.sum.Stat(); err != nil {
		return fmt.Errorf("stat blob %s sidecar: %w", r.sha, err)
	} else if fi.Size() != sumHeaderLen+blocks*r.format.size() {
		return r.corrupt(fmt.Sprintf("sidecar has %d bytes for %d blocks", fi.Size(), blocks))
	}
	if fi, err := r.f.Stat(); err != nil {
		return fmt.Errorf("stat blob %s: %w", r.sha, err)
	} else if fi.Size() != r.size {
		return r.corrupt(fmt.Sprintf("file has %d bytes, sidecar says %d", fi.Size(), r.size))
	}
	if length < 0 {
		r.whole = sha256.New()
		offset, length = 0, r.size
		if r.size == 0 && hex.EncodeToString(r.whole.Sum(nil)) != r.sha {
			return r.corrupt("empty file does not match its name")
		}
	}
	if offset > r.size || length > r.size-offset {
		return fmt.Errorf("blob %s of %d bytes, range [%d,+%d): %w", r.sha, r.size, offset, length, ErrOutOfRange)
	}
	r.pos, r.end = offset, offset+length
	switch r.bs {
	case SumBlockSize:
		r.bufp = r.s.sumPool.Get().(*[]byte)
	case BlockSize:
		r.bufp = r.s.bufPool.Get().(*[]byte)
	default:
		b := make([]byte, r.bs)
		r.bufp = &b
	}
	return nil
}

// Read implements io.Reader.
func (r *reader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.pos >= r.end {
			r.err = io.EOF
			continue
		}
		if err := r.load(); err != nil {
			r.err = err
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	r.pos += int64(n)
	return n, nil
}

// load reads and verifies the block holding r.pos.
func (r *reader) load() error {
	idx := r.pos / r.bs
	start := idx * r.bs
	n := min(r.bs, r.size-start)
	block := (*r.bufp)[:n]
	_, err := r.f.ReadAt(block, start)
	if err == nil && r.s.readFault != nil {
		err = r.s.readFault(r.sha, start)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return r.corrupt(fmt.Sprintf("block %d truncated", idx))
		}
		if errors.Is(err, syscall.EIO) {
			// The disk cannot read this copy back (a bad sector): it is
			// as good as corrupt, and a copy fetched from a peer lands on
			// other sectors.
			return r.corrupt(fmt.Sprintf("block %d unreadable: %v", idx, err))
		}
		return fmt.Errorf("read blob %s block %d: %w", r.sha, idx, err)
	}
	var want [sha256.Size]byte
	sl := r.format.size()
	if _, err := r.sum.ReadAt(want[:sl], sumHeaderLen+idx*sl); err != nil {
		return r.corrupt(fmt.Sprintf("sidecar entry %d: %v", idx, err))
	}
	var got [sha256.Size]byte
	if !bytes.Equal(r.format.appendSum(got[:0], block), want[:sl]) {
		return r.corrupt(fmt.Sprintf("block %d hash mismatch", idx))
	}
	if r.whole != nil {
		r.whole.Write(block)
		if start+n == r.size {
			if got := hex.EncodeToString(r.whole.Sum(nil)); got != r.sha {
				return r.corrupt(fmt.Sprintf("content hashes to %s", got))
			}
		}
	}
	r.pending = block[r.pos-start : min(r.end, start+n)-start]
	return nil
}

// corrupt quarantines the blob and returns the error the caller reports.
func (r *reader) corrupt(what string) error {
	err := fmt.Errorf("blob %s: %s: %w", r.sha, what, ErrCorrupt)
	if qerr := r.s.quarantine(r.sha, r.f); qerr != nil {
		return errors.Join(err, qerr)
	}
	return err
}

// Close implements io.Closer.
func (r *reader) Close() error {
	if r.bufp != nil {
		switch len(*r.bufp) {
		case SumBlockSize:
			r.s.sumPool.Put(r.bufp)
		case BlockSize:
			r.s.bufPool.Put(r.bufp)
		}
	}
	r.bufp, r.pending = nil, nil
	if r.err == nil {
		r.err = fs.ErrClosed
	}
	err := r.f.Close()
	if r.sum != nil {
		if serr := r.sum.Close(); err == nil {
			err = serr
		}
	}
	return err
}

// quarantine moves the blob (and its sidecar) to quarantine/, unless the
// file at its path is no longer the one found corrupt (already moved, or
// replaced by a repaired copy).
func (s *Store) quarantine(sha string, opened *os.File) error {
	l := s.lockFor(sha)
	l.Lock()
	defer l.Unlock()
	ofi, err := opened.Stat()
	if err != nil {
		return fmt.Errorf("quarantine blob %s: %w", sha, err)
	}
	cur, err := os.Stat(s.path(sha))
	if err != nil || !os.SameFile(ofi, cur) {
		return nil
	}
	if err := os.Rename(s.path(sha), filepath.Join(s.quarDir, sha)); err != nil {
		return fmt.Errorf("quarantine blob %s: %w", sha, err)
	}
	if err := os.Rename(s.sumPath(sha), filepath.Join(s.quarDir, sha+".sum")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("quarantine blob %s sidecar: %w", sha, err)
	}
	s.corrupt.Add(1)
	if err := syncDir(filepath.Dir(s.path(sha))); err != nil {
		return fmt.Errorf("quarantine blob %s: %w", sha, err)
	}
	return nil
}

// Corruptions is how many copies this store has moved to quarantine since
// it was opened: blobs that failed verification on a read or a scrub.
func (s *Store) Corruptions() int64 { return s.corrupt.Load() }

// Quarantined reports whether a corrupt copy of the blob sits in
// quarantine.
func (s *Store) Quarantined(sha string) bool {
	if !ValidSHA(sha) {
		return false
	}
	_, err := os.Stat(filepath.Join(s.quarDir, sha))
	return err == nil
}

// dropQuarantine removes the quarantined copy of a blob, once a good copy
// is back or nothing references it any more.
func (s *Store) dropQuarantine(sha string) error {
	for _, p := range []string{filepath.Join(s.quarDir, sha), filepath.Join(s.quarDir, sha+".sum")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("drop quarantined blob %s: %w", sha, err)
		}
	}
	return nil
}

// listQuarantine returns the shas of quarantined blobs.
func (s *Store) listQuarantine() ([]string, error) {
	ents, err := os.ReadDir(s.quarDir)
	if err != nil {
		return nil, fmt.Errorf("list quarantine: %w", err)
	}
	var out []string
	for _, e := range ents {
		if ValidSHA(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
