//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// MountTmpfs mounts a tmpfs of size bytes on a fresh directory and returns
// it. It needs root (CAP_SYS_ADMIN) and fails the test, not skips it,
// without. The unmount is registered now, so it runs after the cleanups of
// anything started later, such as the processes using the mount.
func MountTmpfs(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Fatalf("mount a %d-byte tmpfs on %s: %v (this test needs root or CAP_SYS_ADMIN, as CI has; run it as root or with -short)", size, dir, err)
	}
	t.Cleanup(func() {
		err := syscall.Unmount(dir, 0)
		if errors.Is(err, syscall.EBUSY) {
			err = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		if err != nil {
			t.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// FreeBytes is the space an unprivileged writer can still use on the
// filesystem holding path.
func FreeBytes(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// FillDisk writes a file at path until at most leave bytes remain free on
// its filesystem (ENOSPC on the way is not an error) and returns the bytes
// written.
func FillDisk(path string, leave int64) (int64, error) {
	free, err := FreeBytes(filepath.Dir(path))
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, fmt.Errorf("create filler %s: %w", path, err)
	}
	buf := make([]byte, 1<<20)
	var n int64
	for want := free - leave; n < want; {
		chunk := buf
		if rest := want - n; rest < int64(len(chunk)) {
			chunk = chunk[:rest]
		}
		w, err := f.Write(chunk)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			_ = f.Close()
			return n, fmt.Errorf("write filler %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		return n, fmt.Errorf("close filler %s: %w", path, err)
	}
	return n, nil
}
