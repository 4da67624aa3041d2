//go:build unix

package coordinator

import (
	"fmt"
	"syscall"
)

// diskFree returns the bytes free to this process on the filesystem of
// dir.
func diskFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
