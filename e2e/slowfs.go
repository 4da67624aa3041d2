//go:build linux

package e2e

// A slow disk for one coordinator: a FUSE passthrough filesystem served by
// the test process (go-fuse's loopback over a t.TempDir()) whose fsync,
// fdatasync and directory fsync sleep a delay the test adjusts at run time
// before doing the real fsync. Every other operation passes straight
// through, so only durability gets slow, as on a disk whose write cache
// flushes take long. There is no device-mapper (dm-delay) on the test
// kernel; /dev/fuse is enough, and DirectMount calls mount(2) itself, so
// no fusermount binary is needed (it needs root).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// SlowFS is a mounted passthrough filesystem whose fsyncs take Delay
// longer than the backing disk's.
type SlowFS struct {
	// Dir is the mount point: what a process should use.
	Dir string
	// Backing is the directory the mount passes through to.
	Backing string

	server *fuse.Server
	delay  atomic.Int64 // nanoseconds each fsync sleeps first
	// stop ends sleeping fsyncs when the mount goes away.
	stop     chan struct{}
	stopOnce sync.Once

	fsyncs, fdatasyncs, dirFsyncs, delayed atomic.Int64
	slept                                  atomic.Int64 // nanoseconds
}

// SlowFSStats counts the fsyncs a SlowFS served.
type SlowFSStats struct {
	// Fsyncs, Fdatasyncs and DirFsyncs count the calls by kind.
	Fsyncs, Fdatasyncs, DirFsyncs int64
	// Delayed is how many of them slept; Slept is the time they slept.
	Delayed int64
	Slept   time.Duration
}

// Total is every fsync kind summed.
func (s SlowFSStats) Total() int64 { return s.Fsyncs + s.Fdatasyncs + s.DirFsyncs }

// Sub is s minus an earlier reading.
func (s SlowFSStats) Sub(old SlowFSStats) SlowFSStats {
	return SlowFSStats{
		Fsyncs: s.Fsyncs - old.Fsyncs, Fdatasyncs: s.Fdatasyncs - old.Fdatasyncs, DirFsyncs: s.DirFsyncs - old.DirFsyncs,
		Delayed: s.Delayed - old.Delayed, Slept: s.Slept - old.Slept,
	}
}

// SlowFSUnavailable says why this machine cannot mount a SlowFS (no
// /dev/fuse, not root), or returns "" when it can.
func SlowFSUnavailable() string {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Sprintf("no FUSE device: %v", err)
	}
	if os.Geteuid() != 0 {
		return "mounting FUSE without fusermount needs root"
	}
	return ""
}

// MountSlowFS mounts a SlowFS with no delay over a fresh directory. It
// skips the test where FUSE cannot be mounted (SlowFSUnavailable) and
// fails it when the mount itself fails. The unmount is registered now, so
// it runs after the cleanups of anything started later, such as the
// processes using the mount; it falls back to a lazy unmount.
func MountSlowFS(t testing.TB) *SlowFS {
	t.Helper()
	if why := SlowFSUnavailable(); why != "" {
		t.Skipf("slow fsync filesystem: %s", why)
	}
	s := &SlowFS{Backing: t.TempDir(), Dir: t.TempDir(), stop: make(chan struct{})}
	lb, err := fs.NewLoopbackRoot(s.Backing)
	if err != nil {
		t.Fatalf("loopback root over %s: %v", s.Backing, err)
	}
	ln, ok := lb.(*fs.LoopbackNode)
	if !ok {
		t.Fatalf("loopback root over %s is a %T, not a *fs.LoopbackNode", s.Backing, lb)
	}
	root := &slowNode{LoopbackNode: ln, fs: s}
	// The loopback resolves paths against RootNode; make it the wrapper
	// so that every node it creates is wrapped (WrapChild) too.
	ln.RootData.RootNode = root
	sec := time.Second
	s.server, err = fs.Mount(s.Dir, root, &fs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			FsName:            s.Backing,
			Name:              "slowfs",
			// Let the kernel send parallel requests: a slow fsync of
			// one file must not hold up reads and writes of others.
			MaxBackground: 64,
		},
	})
	if err != nil {
		t.Fatalf("mount slow fsync filesystem on %s: %v", s.Dir, err)
	}
	t.Cleanup(func() {
		if err := s.unmount(); err != nil {
			t.Errorf("unmount slow fsync filesystem %s: %v", s.Dir, err)
		}
	})
	return s
}

// unmount unmounts s, lazily if the mount is still busy, and waits for
// the server to stop.
func (s *SlowFS) unmount() error {
	s.SetDelay(0)
	s.stopOnce.Do(func() { close(s.stop) })
	err := s.server.Unmount()
	if err == nil {
		return nil
	}
	if lerr := syscall.Unmount(s.Dir, syscall.MNT_DETACH); lerr != nil && !errors.Is(lerr, syscall.EINVAL) {
		return fmt.Errorf("unmount: %w; lazy unmount: %w", err, lerr)
	}
	done := make(chan struct{})
	go func() { s.server.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("unmount: %w; lazily unmounted, but the server still runs after 10s", err)
	}
}

// SetDelay sets how long each fsync sleeps from now on; 0 ends the fault.
// An fsync already sleeping keeps the delay it started with.
func (s *SlowFS) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// Delay is the current fsync delay.
func (s *SlowFS) Delay() time.Duration { return time.Duration(s.delay.Load()) }

// Stats reads the counters.
func (s *SlowFS) Stats() SlowFSStats {
	return SlowFSStats{
		Fsyncs: s.fsyncs.Load(), Fdatasyncs: s.fdatasyncs.Load(), DirFsyncs: s.dirFsyncs.Load(),
		Delayed: s.delayed.Load(), Slept: time.Duration(s.slept.Load()),
	}
}

// fuseFsyncDatasync is the FsyncFlags bit fdatasync(2) sets.
const fuseFsyncDatasync = 1

// wait counts one fsync and sleeps the current delay (less only when the
// mount goes away). A kernel interrupt of the request is not honoured: a
// real disk's fsync sleeps uninterruptibly and never fails with EINTR,
// while the kernel interrupts a FUSE request whenever a signal reaches the
// caller, which Go's runtime sends its threads for preemption; honouring it
// made raft's log appends fail with "interrupted system call".
func (s *SlowFS) wait(_ context.Context, dir bool, flags uint32) syscall.Errno {
	switch {
	case dir:
		s.dirFsyncs.Add(1)
	case flags&fuseFsyncDatasync != 0:
		s.fdatasyncs.Add(1)
	default:
		s.fsyncs.Add(1)
	}
	d := s.Delay()
	if d <= 0 {
		return 0
	}
	s.delayed.Add(1)
	start := time.Now()
	tm := time.NewTimer(d)
	defer tm.Stop()
	defer func() { s.slept.Add(int64(time.Since(start))) }()
	select {
	case <-tm.C:
	case <-s.stop:
	}
	return 0
}

// slowNode is a loopback node whose fsyncs wait first.
type slowNode struct {
	*fs.LoopbackNode
	fs *SlowFS
}

var (
	_ fs.NodeWrapChilder    = (*slowNode)(nil)
	_ fs.NodeFsyncer        = (*slowNode)(nil)
	_ fs.NodeOpendirHandler = (*slowNode)(nil)
	_ fs.FileReaddirenter   = (*slowDir)(nil)
	_ fs.FileSeekdirer      = (*slowDir)(nil)
	_ fs.FileReleasedirer   = (*slowDir)(nil)
	_ fs.FileFsyncdirer     = (*slowDir)(nil)
)

// WrapChild wraps every node the loopback creates, so the whole tree is
// slow.
func (n *slowNode) WrapChild(_ context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &slowNode{LoopbackNode: ln, fs: n.fs}
	}
	return ops
}

// Fsync serves fsync(2) and fdatasync(2) of a file: wait, then fsync the
// backing file through its handle (or by path, when there is none).
func (n *slowNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if errno := n.fs.wait(ctx, false, flags); errno != 0 {
		return errno
	}
	if h, ok := f.(fs.FileFsyncer); ok {
		return h.Fsync(ctx, flags)
	}
	p := filepath.Join(n.RootData.Path, n.Path(nil))
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	defer syscall.Close(fd)
	return fs.ToErrno(syscall.Fsync(fd))
}

// OpendirHandle opens the loopback's directory handle and wraps it so
// that fsync of a directory waits too (go-fuse asks the handle first).
func (n *slowNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fuseFlags, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &slowDir{fh: fh, fs: n.fs}, fuseFlags, 0
}

// slowDir is an open directory whose fsync waits first.
type slowDir struct {
	fh fs.FileHandle
	fs *SlowFS
}

// Readdirent passes through.
func (d *slowDir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if r, ok := d.fh.(fs.FileReaddirenter); ok {
		return r.Readdirent(ctx)
	}
	return nil, 0
}

// Seekdir passes through.
func (d *slowDir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if s, ok := d.fh.(fs.FileSeekdirer); ok {
		return s.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

// Releasedir passes through.
func (d *slowDir) Releasedir(ctx context.Context, flags uint32) {
	if r, ok := d.fh.(fs.FileReleasedirer); ok {
		r.Releasedir(ctx, flags)
	}
}

// Fsyncdir waits, then fsyncs the backing directory.
func (d *slowDir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if errno := d.fs.wait(ctx, true, flags); errno != 0 {
		return errno
	}
	if s, ok := d.fh.(fs.FileFsyncdirer); ok {
		return s.Fsyncdir(ctx, flags)
	}
	return syscall.ENOTSUP
}
