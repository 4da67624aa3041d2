package monitoring

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// Defaults for --log-file rotation.
const (
	// DefaultLogMaxBytes is the size at which a log file is rotated.
	DefaultLogMaxBytes = 100 << 20
	// DefaultLogKeep is how many rotated files are kept besides the live one.
	DefaultLogKeep = 5
)

// RotatingWriter is an io.Writer over a log file that rotates by size:
// when a write would take the file past MaxBytes, path becomes path.1,
// path.1 becomes path.2 and so on, the oldest past Keep is removed, and a
// fresh path is opened. A single write is never split across files. It is
// safe for concurrent use.
type RotatingWriter struct {
	path     string
	maxBytes int64
	keep     int

	mu   sync.Mutex
	f    *os.File
	size int64
}

// NewRotatingWriter opens (appending to) the log file at path, creating
// its directory. maxBytes <= 0 means DefaultLogMaxBytes; keep < 0 means
// DefaultLogKeep, and keep 0 discards the file on rotation.
func NewRotatingWriter(path string, maxBytes int64, keep int) (*RotatingWriter, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultLogMaxBytes
	}
	if keep < 0 {
		keep = DefaultLogKeep
	}
	w := &RotatingWriter{path: path, maxBytes: maxBytes, keep: keep}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("log dir for %s: %w", path, err)
	}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

// open opens the live file for appending and records its size.
func (w *RotatingWriter) open() error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open log %s: %w", w.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("stat log %s: %w", w.path, err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Write appends p, rotating first when p would not fit.
func (w *RotatingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return 0, errors.New("log file closed")
	}
	if w.size > 0 && w.size+int64(len(p)) > w.maxBytes {
		if err := w.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	w.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("write log %s: %w", w.path, err)
	}
	return n, nil
}

// rotate shifts the numbered files up by one and opens a fresh live file.
func (w *RotatingWriter) rotate() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close log %s: %w", w.path, err)
	}
	w.f = nil
	numbered := func(i int) string { return w.path + "." + strconv.Itoa(i) }
	if err := os.Remove(numbered(w.keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old log: %w", err)
	}
	for i := w.keep - 1; i >= 1; i-- {
		if err := os.Rename(numbered(i), numbered(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("shift log %d: %w", i, err)
		}
	}
	if w.keep > 0 {
		if err := os.Rename(w.path, numbered(1)); err != nil {
			return fmt.Errorf("rotate log %s: %w", w.path, err)
		}
	} else if err := os.Remove(w.path); err != nil {
		return fmt.Errorf("drop log %s: %w", w.path, err)
	}
	return w.open()
}

// Reopen closes and reopens the live file, for use after an outside tool
// (logrotate) moved it; call it on SIGHUP.
func (w *RotatingWriter) Reopen() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			return fmt.Errorf("close log %s: %w", w.path, err)
		}
		w.f = nil
	}
	return w.open()
}

// Close closes the live file; later writes fail.
func (w *RotatingWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return fmt.Errorf("close log %s: %w", w.path, err)
	}
	return nil
}
