// Package bufpipe is an in-memory pipe with a bounded buffer. Unlike
// io.Pipe, a write returns as soon as its bytes are copied into the buffer,
// so the writer and the reader run at the same time; the writer waits only
// while the buffer is full.
//
// It lets one producer feed consumers that may fail on their own (a peer
// that receives a replica, a validator that stops at its error limit):
// once the reader side is closed, writes are dropped and succeed, so a
// consumer that gives up never stalls or fails the producer.
package bufpipe

import (
	"errors"
	"io"
	"sync"
)

// ErrWriteClosed is returned by Write after CloseWithError.
var ErrWriteClosed = errors.New("bufpipe: write on closed pipe")

// Pipe is a bounded in-memory pipe; Write, Read, Close and CloseWithError
// are safe to call from different goroutines. Create it with New.
type Pipe struct {
	mu      sync.Mutex
	changed *sync.Cond
	bufs    [][]byte // queued writes, oldest first; bufs[0] may be partly read
	queued  int      // bytes in bufs
	max     int
	werr    error // set once the writer closed: io.EOF or its error
	rclosed bool  // set once the reader closed: writes are dropped
}

// New returns a pipe that buffers up to max bytes. A single write larger
// than max is accepted once the buffer is empty.
func New(max int) *Pipe {
	p := &Pipe{max: max}
	p.changed = sync.NewCond(&p.mu)
	return p
}

// Write copies b into the buffer, waiting while it is full. After the
// reader closed it drops b and reports success.
func (p *Pipe) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.rclosed && p.werr == nil && p.queued > 0 && p.queued+len(b) > p.max {
		p.changed.Wait()
	}
	switch {
	case p.werr != nil:
		return 0, ErrWriteClosed
	case p.rclosed:
		return len(b), nil
	}
	p.bufs = append(p.bufs, append([]byte(nil), b...))
	p.queued += len(b)
	p.changed.Broadcast()
	return len(b), nil
}

// TryWrite is Write that never waits: when b does not fit in the buffer now
// it writes nothing and reports false. It reports true for a write it took,
// or dropped because the reader closed, and false after CloseWithError.
func (p *Pipe) TryWrite(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.werr != nil:
		return false
	case p.rclosed || len(b) == 0:
		return true
	case p.queued > 0 && p.queued+len(b) > p.max:
		return false
	}
	p.bufs = append(p.bufs, append([]byte(nil), b...))
	p.queued += len(b)
	p.changed.Broadcast()
	return true
}

// ReaderClosed reports whether the reader's side was closed.
func (p *Pipe) ReaderClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rclosed
}

// CloseWithError ends the writer's side: once the buffer is drained the
// reader gets err, or io.EOF when err is nil. Only the first call counts.
func (p *Pipe) CloseWithError(err error) {
	if err == nil {
		err = io.EOF
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.werr == nil {
		p.werr = err
	}
	p.changed.Broadcast()
}

// Read copies buffered bytes into b, waiting for some when the buffer is
// empty. It returns the writer's close error once everything written has
// been read, and io.ErrClosedPipe after Close.
func (p *Pipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.rclosed && len(p.bufs) == 0 && p.werr == nil {
		p.changed.Wait()
	}
	if p.rclosed {
		return 0, io.ErrClosedPipe
	}
	if len(p.bufs) == 0 {
		return 0, p.werr
	}
	n := 0
	for n < len(b) && len(p.bufs) > 0 {
		c := copy(b[n:], p.bufs[0])
		n += c
		if c == len(p.bufs[0]) {
			p.bufs[0] = nil
			p.bufs = p.bufs[1:]
		} else {
			p.bufs[0] = p.bufs[0][c:]
		}
	}
	p.queued -= n
	p.changed.Broadcast()
	return n, nil
}

// Close ends the reader's side: what is buffered is released and later
// writes are dropped. It always returns nil, so a Pipe can be an HTTP
// request body or any other io.ReadCloser.
func (p *Pipe) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rclosed = true
	p.bufs, p.queued = nil, 0
	p.changed.Broadcast()
	return nil
}
