//go:build linux

package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSlowFS checks the slow fsync filesystem TestSlowFsync puts under one
// coordinator: fsync, fdatasync and directory fsync each wait the delay
// set at run time, nothing else does, bytes pass through unchanged, and a
// shared mapping sees writes made through the file (bbolt relies on it).
func TestSlowFS(t *testing.T) {
	s := MountSlowFS(t)
	// Long beside a real fsync, which the concurrency check below must not
	// mistake for serialisation. (A runtime signal that interrupts the
	// FUSE call no longer ends it with EINTR: SlowFS.wait ignores kernel
	// interrupts, as a real disk's fsync cannot be interrupted.)
	const delay = 300 * time.Millisecond

	dir := filepath.Join(s.Dir, "a")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "f.dat")
	data := diskfullSeededBytes(1<<20, 7)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	fast := slowfsTime(t, "fsync with no delay", f.Sync)
	if st := s.Stats(); st.Fsyncs != 1 || st.Delayed != 0 {
		t.Fatalf("after one undelayed fsync: %+v, want Fsyncs 1 Delayed 0", st)
	}

	s.SetDelay(delay)
	before := s.Stats()
	// Writes, renames and reads do not wait.
	tmp := filepath.Join(dir, "g.tmp")
	if err := os.WriteFile(tmp, data[:4096], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "g.dat")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through the mount: %d bytes, %v", len(got), err)
	}
	if d := s.Stats().Sub(before); d.Total() != 0 {
		t.Fatalf("write, rename and read counted fsyncs: %+v", d)
	}

	slow := slowfsTime(t, "fsync", f.Sync)
	slowData := slowfsTime(t, "fdatasync", func() error { return syscall.Fdatasync(int(f.Fd())) })
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	slowDir := slowfsTime(t, "directory fsync", d.Sync)
	for what, took := range map[string]time.Duration{"fsync": slow, "fdatasync": slowData, "directory fsync": slowDir} {
		if took < delay {
			t.Errorf("%s took %s with a %s delay", what, took, delay)
		}
	}
	got := s.Stats().Sub(before)
	if got.Fsyncs != 1 || got.Fdatasyncs != 1 || got.DirFsyncs != 1 || got.Delayed != 3 || got.Slept < 3*delay {
		t.Errorf("counters after one of each fsync: %+v, want one of each, 3 delayed, slept >= %s", got, 3*delay)
	}
	t.Logf("fsync %s undelayed; with a %s delay: fsync %s, fdatasync %s, directory fsync %s", fast, delay, slow, slowData, slowDir)

	// Two files' fsyncs wait side by side, not one after the other: the
	// mount adds latency, not serialization.
	g, err := os.OpenFile(filepath.Join(dir, "g.dat"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	start := time.Now()
	var wg sync.WaitGroup
	for _, h := range []*os.File{f, g} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Sync(); err != nil {
				t.Errorf("fsync %s: %v", h.Name(), err)
			}
		}()
	}
	wg.Wait()
	files := time.Since(start).Round(time.Millisecond)
	// And so do two directories' (TestSlowFsync reads serialized
	// directory fsyncs as the coordinator's doing, not the mount's).
	other := filepath.Join(s.Dir, "b")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	e, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	start = time.Now()
	for _, h := range []*os.File{d, e} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Sync(); err != nil {
				t.Errorf("fsync directory %s: %v", h.Name(), err)
			}
		}()
	}
	wg.Wait()
	dirs := time.Since(start).Round(time.Millisecond)
	t.Logf("two concurrent fsyncs with a %s delay: of different files %s, of different directories %s", delay, files, dirs)
	if files >= 2*delay || dirs >= 2*delay {
		t.Errorf("concurrent fsyncs ran one after the other: files %s, directories %s, delay %s", files, dirs, delay)
	}

	// A shared mapping sees a write made through the file afterwards.
	m, err := syscall.Mmap(int(f.Fd()), 0, len(data), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap through the mount: %v", err)
	}
	defer syscall.Munmap(m)
	patch := []byte("written after mmap")
	if _, err := f.WriteAt(patch, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m[4096:4096+len(patch)], patch) {
		t.Errorf("the mapping does not see a write made after it: %q", m[4096:4096+len(patch)])
	}

	// Back to no delay: fsync is fast again, and the bytes reached the
	// backing directory.
	s.SetDelay(0)
	before = s.Stats()
	slowfsTime(t, "fsync after the delay is cleared", f.Sync)
	if d := s.Stats().Sub(before); d.Delayed != 0 || d.Fsyncs != 1 {
		t.Errorf("fsync after clearing the delay: %+v, want one undelayed", d)
	}
	want := append(append(append([]byte(nil), data[:4096]...), patch...), data[4096+len(patch):]...)
	if got, err := os.ReadFile(filepath.Join(s.Backing, "a", "f.dat")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("backing file differs from what was written through the mount (%d bytes, %v)", len(got), err)
	}
}

// slowfsTime runs op, fails the test on its error, and returns how long
// it took.
func slowfsTime(t *testing.T, what string, op func() error) time.Duration {
	t.Helper()
	start := time.Now()
	if err := op(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return time.Since(start).Round(time.Millisecond)
}
