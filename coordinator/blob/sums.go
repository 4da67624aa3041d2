package blob

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// RewriteSums rewrites the sidecar of every blob in the store with block
// sums in format. Each blob is read whole and verified against its
// current sidecar and its sha256 name first; a corrupt one is quarantined,
// as by any read, and counted in skipped. It is for a store no coordinator
// has open: before a downgrade to a build that reads only sha256 sums, or
// back.
func (s *Store) RewriteSums(format SumFormat) (rewritten, skipped int, err error) {
	shas, err := s.List()
	if err != nil {
		return 0, 0, err
	}
	for _, sha := range shas {
		err := s.rewriteSum(sha, format)
		switch {
		case err == nil:
			rewritten++
		case errors.Is(err, ErrCorrupt), errors.Is(err, ErrNotFound):
			skipped++
		default:
			return rewritten, skipped, err
		}
	}
	return rewritten, skipped, nil
}

// rewriteSum writes blob sha's sidecar anew in format from its verified
// content and puts it in place of the old one.
func (s *Store) rewriteSum(sha string, format SumFormat) error {
	rc, err := s.Open(sha)
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(s.tmpDir, "sum-*")
	if err != nil {
		return fmt.Errorf("create temp sidecar: %w", mapNoSpace(err))
	}
	defer func() {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name()) // a no-op once renamed
	}()
	sw := newSumWriter(tmp, format)
	bufp := s.sumPool.Get().(*[]byte)
	defer s.sumPool.Put(bufp)
	var size int64
	for {
		// Every block but the last is whole: readBlock fills it.
		n, rerr := readBlock(rc, *bufp)
		if n > 0 {
			if err := sw.add((*bufp)[:n]); err != nil {
				return fmt.Errorf("blob %s sidecar: %w", sha, mapNoSpace(err))
			}
			size += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr // the read verified every block and the whole hash
		}
	}
	if err := sw.finish(size); err != nil {
		return fmt.Errorf("blob %s sidecar: %w", sha, mapNoSpace(err))
	}
	if err := syncClose(tmp); err != nil {
		return fmt.Errorf("blob %s sidecar: %w", sha, err)
	}
	l := s.lockFor(sha)
	l.Lock()
	defer l.Unlock()
	if err := os.Rename(tmp.Name(), s.sumPath(sha)); err != nil {
		return fmt.Errorf("replace blob %s sidecar: %w", sha, err)
	}
	return syncDir(filepath.Dir(s.path(sha)))
}
