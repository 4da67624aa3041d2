package blob

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"syscall"
	"testing"
	"testing/iotest"
)

func TestCorruptFullRead(t *testing.T) {
	s := newStore(t)
	b := randBytes(3*BlockSize+10, 5)
	sha := ingest(t, s, b)
	flipByte(t, s.path(sha), BlockSize+7)

	rc, err := s.Open(sha)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read err = %v, want ErrCorrupt", err)
	}
	if len(got) != BlockSize || !bytes.Equal(got, b[:BlockSize]) {
		t.Fatalf("read %d bytes before the error, want exactly the intact first block", len(got))
	}
	if s.Has(sha) || !s.Quarantined(sha) {
		t.Fatalf("corrupt blob not quarantined: has=%v quarantined=%v", s.Has(sha), s.Quarantined(sha))
	}
	if _, err := s.Open(sha); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open after quarantine err = %v, want ErrNotFound", err)
	}
}

func TestCorruptRangedRead(t *testing.T) {
	s := newStore(t)
	b := randBytes(4*BlockSize, 6)
	sha := ingest(t, s, b)
	flipByte(t, s.path(sha), 2*SumBlockSize+1)

	// A range inside intact blocks reads fine.
	rc, err := s.OpenRange(sha, 10, 2*SumBlockSize-20)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil || !bytes.Equal(got, b[10:2*SumBlockSize-10]) {
		t.Fatalf("intact range: %d bytes, err %v", len(got), err)
	}
	if !s.Has(sha) {
		t.Fatal("quarantined after reading only intact blocks")
	}

	// A range that only touches the damaged block's far end still fails.
	rc, err = s.OpenRange(sha, 3*SumBlockSize-5, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err = io.ReadAll(rc)
	if !errors.Is(err, ErrCorrupt) || len(got) != 0 {
		t.Fatalf("damaged range: %d bytes, err %v; want 0 bytes and ErrCorrupt", len(got), err)
	}
	if !s.Quarantined(sha) || s.Has(sha) {
		t.Fatal("corrupt blob not quarantined by ranged read")
	}
}

func TestWholeHashChecked(t *testing.T) {
	// Bytes and sidecar agree with each other but not with the name: only
	// the whole-file check can tell.
	s := newStore(t)
	a, b := randBytes(BlockSize+9, 7), randBytes(BlockSize+9, 8)
	shaA := ingest(t, s, a)
	shaB := ingest(t, s, b)
	if err := s.Delete(shaA); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(s.path(shaB), s.path(shaA)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(s.sumPath(shaB), s.sumPath(shaA)); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Open(shaA)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if len(got) != BlockSize {
		t.Fatalf("returned %d bytes; the last block must be held back until the whole hash matches", len(got))
	}
	if !s.Quarantined(shaA) {
		t.Fatal("not quarantined")
	}
}

func TestStructuralCorruption(t *testing.T) {
	cases := map[string]func(s *Store, sha string) error{
		"truncated":       func(s *Store, sha string) error { return os.Truncate(s.path(sha), BlockSize) },
		"extended":        func(s *Store, sha string) error { return os.Truncate(s.path(sha), 2*BlockSize+100) },
		"missing sidecar": func(s *Store, sha string) error { return os.Remove(s.sumPath(sha)) },
		"bad sidecar":     func(s *Store, sha string) error { return os.WriteFile(s.sumPath(sha), []byte("junk"), 0o600) },
		"flipped sidecar": func(s *Store, sha string) error { flipByte(t, s.sumPath(sha), sumHeaderLen+40); return nil },
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			s := newStore(t)
			sha := ingest(t, s, randBytes(2*BlockSize+1, 9))
			if err := damage(s, sha); err != nil {
				t.Fatal(err)
			}
			rc, err := s.Open(sha)
			if err == nil {
				_, err = io.ReadAll(rc)
				_ = rc.Close()
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if s.Has(sha) || !s.Quarantined(sha) {
				t.Fatal("not quarantined")
			}
		})
	}
}

func TestRangeAcrossBlocks(t *testing.T) {
	s := newStore(t)
	size := int64(3*BlockSize + 500)
	b := randBytes(int(size), 10)
	sha := ingest(t, s, b)
	ranges := [][2]int64{
		{0, 0}, {0, 1}, {0, size}, {BlockSize - 10, 20}, {BlockSize, BlockSize},
		{BlockSize - 1, 1}, {2*BlockSize - 1, BlockSize + 2}, {5, 3*BlockSize + 1},
		{size - 1, 1}, {size, 0}, {3 * BlockSize, 500},
	}
	for _, r := range ranges {
		rc, err := s.OpenRange(sha, r[0], r[1])
		if err != nil {
			t.Fatalf("OpenRange%v: %v", r, err)
		}
		got, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || !bytes.Equal(got, b[r[0]:r[0]+r[1]]) {
			t.Fatalf("OpenRange%v: %d bytes, err %v", r, len(got), err)
		}
	}
	// Read semantics with odd buffer sizes.
	rc, err := s.OpenRange(sha, BlockSize-3, BlockSize+7)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := iotest.TestReader(rc, b[BlockSize-3:2*BlockSize+4]); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{size, 1}, {-1, 1}, {0, size + 1}, {1, -1}, {size + 1, 0}} {
		if _, err := s.OpenRange(sha, r[0], r[1]); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("OpenRange%v err = %v, want ErrOutOfRange", r, err)
		}
	}
	if !s.Has(sha) {
		t.Fatal("range errors must not quarantine")
	}
}

func TestQuarantineSparesReplacement(t *testing.T) {
	// A reader that finds its (old) copy corrupt must not quarantine a good
	// copy that has replaced it in the meantime.
	s := newStore(t)
	b := randBytes(BlockSize+1, 11)
	sha := ingest(t, s, b)
	flipByte(t, s.path(sha), 3)
	rc, err := s.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := s.Delete(sha); err != nil {
		t.Fatal(err)
	}
	ingest(t, s, b)
	if _, err := io.ReadAll(rc); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if !s.Has(sha) {
		t.Fatal("the good replacement was quarantined")
	}
	got, err := readAll(s, sha)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("replacement unreadable: %v", err)
	}
}

func TestReadAfterClose(t *testing.T) {
	s := newStore(t)
	sha := ingest(t, s, []byte("hello"))
	rc, err := s.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := rc.Read(make([]byte, 4)); n != 0 || err == nil {
		t.Fatalf("Read after Close = %d, %v", n, err)
	}
}

func readAll(s *Store, sha string) ([]byte, error) {
	rc, err := s.Open(sha)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// TestOlderBlockSizeReadable: a blob whose sidecar was written by an older
// build (sha256 sums of 1 MiB blocks) reads and verifies as before, whole
// and in ranges, and corruption in it is still caught.
func TestOlderBlockSizeReadable(t *testing.T) {
	s := newStore(t)
	b := randBytes(2*BlockSize+100, 60)
	sha := ingest(t, s, b)
	// Rewrite the sidecar as the older format: one sum per 1 MiB block.
	if err := os.WriteFile(s.sumPath(sha), sha256Sidecar(b, BlockSize), 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(s, sha)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("whole read: %v", err)
	}
	rc, err := s.OpenRange(sha, BlockSize-3, 10)
	if err != nil {
		t.Fatal(err)
	}
	part, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(part, b[BlockSize-3:BlockSize+7]) {
		t.Fatalf("ranged read %q: %v", part, err)
	}
	flipByte(t, s.path(sha), BlockSize+1)
	rc, err = s.OpenRange(sha, BlockSize, 4)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt block read: %v, want ErrCorrupt", err)
	}
}

// TestRangedReadHashesLittle: a small ranged read verifies only the
// SumBlockSize blocks it touches, not a whole BlockSize.
func TestRangedReadHashesLittle(t *testing.T) {
	s := newStore(t)
	b := randBytes(4*BlockSize, 61)
	sha := ingest(t, s, b)
	rc, err := s.OpenRange(sha, 3*SumBlockSize+10, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	part, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(part, b[3*SumBlockSize+10:3*SumBlockSize+110]) {
		t.Fatalf("ranged read: %v", err)
	}
	if r := rc.(*reader); r.bs != SumBlockSize || len(*r.bufp) != 0 && cap(*r.bufp) != SumBlockSize {
		t.Fatalf("read with block size %d", r.bs)
	}
}

// TestSidecarHoldsCRC32C: new sidecars hold one 4-byte CRC32C per
// SumBlockSize block, and a block whose bytes change no longer matches.
func TestSidecarHoldsCRC32C(t *testing.T) {
	s := newStore(t)
	b := randBytes(3*SumBlockSize+5, 62)
	sha := ingest(t, s, b)
	side, err := os.ReadFile(s.sumPath(sha))
	if err != nil {
		t.Fatal(err)
	}
	if string(side[:8]) != sumMagicCRC32C || len(side) != sumHeaderLen+4*4 {
		t.Fatalf("sidecar %q… of %d bytes, want CRC32C header and 4 sums", side[:8], len(side))
	}
	for i := 0; i < 4; i++ {
		blk := b[i*SumBlockSize : min(len(b), (i+1)*SumBlockSize)]
		want := crc32.Checksum(blk, crc32.MakeTable(crc32.Castagnoli))
		if got := binary.BigEndian.Uint32(side[sumHeaderLen+4*i:]); got != want {
			t.Fatalf("block %d sum %08x, want %08x", i, got, want)
		}
	}
	flipByte(t, s.path(sha), 3*SumBlockSize+1)
	rc, err := s.OpenRange(sha, 3*SumBlockSize, 5)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a changed block: %v, want ErrCorrupt", err)
	}
}

// TestUnreadableBlockIsCorrupt: a block the disk cannot read back (EIO, a
// bad sector) makes the copy corrupt: quarantined and counted, so the
// repair fetches a good one from a peer. Any other read error is the
// reader's failure only and leaves the copy in place.
func TestUnreadableBlockIsCorrupt(t *testing.T) {
	s := newStore(t)
	b := randBytes(3*SumBlockSize+10, 7)
	sha := ingest(t, s, b)
	var fault error
	s.readFault = func(got string, off int64) error {
		if got == sha && off == SumBlockSize {
			return fault
		}
		return nil
	}

	fault = &os.PathError{Op: "read", Path: s.path(sha), Err: syscall.ENOMEM}
	if _, err := readAll(s, sha); err == nil || errors.Is(err, ErrCorrupt) || !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("read with ENOMEM: %v, want that error and not ErrCorrupt", err)
	}
	if !s.Has(sha) || s.Corruptions() != 0 {
		t.Fatalf("a transient read error quarantined the blob: has=%v corruptions=%d", s.Has(sha), s.Corruptions())
	}

	fault = &os.PathError{Op: "read", Path: s.path(sha), Err: syscall.EIO}
	got, err := readAll(s, sha)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read with EIO: %v, want ErrCorrupt", err)
	}
	if !bytes.Equal(got, b[:len(got)]) || len(got) > SumBlockSize {
		t.Fatalf("read %d bytes before the bad block, want at most the first block, intact", len(got))
	}
	if s.Has(sha) || !s.Quarantined(sha) || s.Corruptions() != 1 {
		t.Fatalf("unreadable blob: has=%v quarantined=%v corruptions=%d, want quarantined and counted", s.Has(sha), s.Quarantined(sha), s.Corruptions())
	}
}
