// Package dirlock gives a process sole use of a data directory for its
// lifetime, through an advisory lock on a file in it: a second process
// given the same directory fails at start instead of sharing (and
// corrupting) what the first keeps there.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrLocked means another process holds the directory.
var ErrLocked = errors.New("data directory in use by another process")

// Lock creates dir if needed and takes the lock file name in it. The lock
// lasts until unlock is called or the process exits (the kernel drops it
// then, so a crash never leaves it stale). The lock file holds the pid of
// its holder, for the error a second process reports.
func Lock(dir, name string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	if err := lockFile(f); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid := strings.TrimSpace(string(b)); pid != "" {
				holder = " (pid " + pid + ")"
			}
		}
		f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%s%s: %w", dir, holder, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { _ = f.Close() }, nil
}
