package blob

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/vbatch/vbatch/internal/bufpipe"
)

// streamBuffer is how far a streamed replica may fall behind its source
// before the source waits for it.
const streamBuffer = 8 << 20

// Stream pushes a blob to one peer while the blob is still being received,
// so the peer writes its copy at the same time as this node instead of
// after it. Write the content to it as it arrives (Store.IngestTee), then
// end it with the content's sha256 and size (through Fanout.Finish), or
// Abort it. The peer keeps the blob only after a valid end, and only if its
// copy matches. A peer that makes no progress for the Replicator's idle
// timeout while bytes wait for it, or while the upload waits for its
// answer, fails the stream, so that no write or Finish waits on it for good.
type Stream struct {
	// Peer is the node the stream goes to.
	Peer Peer

	pipe    *bufpipe.Pipe
	req     *http.Request
	started chan struct{} // closed on the transport's first body read
	done    chan struct{} // closed once the push ended, with err set
	err     error
	cancel  context.CancelFunc
	// detach stops the upload's context from cancelling the push: the
	// push lives and dies with the upload until outlive lets a straggler
	// complete a copy the upload no longer waits for (bounded by timeout).
	detach  func() bool
	timeout time.Duration
	// repl is the Replicator the stream belongs to: it lists the stream
	// between its end and the peer's answer (Replicator.streaming).
	repl *Replicator

	// written and read count the bytes handed to the pipe and taken by the
	// transport; ended and outliving follow end and outlive. Together they
	// tell the watchdog whether the stream waits on the peer (bytes wait
	// for it, or the upload waits for its answer) or on its source.
	written, read    atomic.Int64
	ended, outliving atomic.Bool
	wd               *watchdog
}

// startedBody closes started on the first Read, which the transport makes
// only after writing the request's headers, where it reads the trailers
// (the race detector sees a value written before then): from then on it
// leaves them alone until the body's end, so their values may be set.
// It also counts what the transport takes, as the peer's progress.
type startedBody struct {
	*bufpipe.Pipe
	s    *Stream
	once bool
}

func (b *startedBody) Read(p []byte) (int, error) {
	if !b.once {
		b.once = true
		close(b.s.started)
	}
	n, err := b.Pipe.Read(p)
	if n > 0 {
		b.s.read.Add(int64(n))
		b.s.wd.progress()
	}
	return n, err
}

// Stream starts a streamed push to p under ctx. Writes never fail: if the
// push breaks, they are dropped and the stream's outcome reports the failure.
func (r *Replicator) Stream(ctx context.Context, p Peer) *Stream {
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Stream{Peer: p, pipe: bufpipe.New(streamBuffer), started: make(chan struct{}), done: make(chan struct{}), cancel: cancel,
		detach: context.AfterFunc(ctx, cancel), timeout: r.stragglerTimeout(), repl: r}
	s.wd = newWatchdog(r.idleTimeout(), s.waitsOnPeer, func() {
		s.pipe.Close() // unblocks a Write waiting for room
		s.cancel()
	})
	body := &startedBody{Pipe: s.pipe, s: s}
	url := r.blobURL(p, "")
	req, err := http.NewRequestWithContext(pctx, http.MethodPost, url, body)
	if err != nil {
		s.wd.stop()
		s.pipe.Close()
		s.err = fmt.Errorf("stream blob to %s: %w", p.ID, err)
		close(s.done)
		return s
	}
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/octet-stream")
	// The keys must be declared up front; end fills in the values by
	// writing into these slices, never into the map, which the transport
	// reads while it writes the headers.
	req.Trailer = http.Header{TrailerSHA: make([]string, 1), HeaderSize: make([]string, 1)}
	s.req = req
	go func() {
		defer close(s.done)
		defer s.wd.stop()
		resp, err := r.client().Do(req)
		s.pipe.Close()
		if err != nil {
			s.err = fmt.Errorf("stream blob to %s: %w", p.ID, s.wd.explain(err))
			return
		}
		defer drainClose(resp.Body)
		if resp.StatusCode/100 != 2 {
			s.err = fmt.Errorf("stream blob to %s: %s", p.ID, statusError(resp))
		}
	}()
	return s
}

// Write hands content to the stream; it waits only while the peer is more
// than a few MiB behind (at most the idle timeout without progress), and
// never fails.
func (s *Stream) Write(b []byte) (int, error) {
	n, err := s.pipe.Write(b)
	s.wrote(n)
	return n, err
}

// tryWrite is Write that never waits (bufpipe.Pipe.TryWrite).
func (s *Stream) tryWrite(b []byte) bool {
	if !s.pipe.TryWrite(b) {
		return false
	}
	s.wrote(len(b))
	return true
}

func (s *Stream) wrote(n int) {
	if n > 0 {
		s.written.Add(int64(n))
		s.wd.progress()
	}
}

// waitsOnPeer reports whether the stream waits on its peer: bytes are
// buffered that it has not taken, or the upload waits for its answer. A
// stream that outlives its upload waits for the answer under the straggler
// timeout instead (a slow disk's fsync), and one whose source is slow
// waits on nobody.
func (s *Stream) waitsOnPeer() bool {
	return s.written.Load() > s.read.Load() || (s.ended.Load() && !s.outliving.Load())
}

// end declares the content's sha256 and size without waiting: once the
// transport has sent the request's headers (it reads the trailer keys
// then), the trailers get their values and the body ends. Until the peer
// answers, the stream is listed in Replicator.streaming, so a push of the
// same blob to that peer waits for it rather than send the bytes again.
// The outcome is s.err once s.done is closed.
func (s *Stream) end(sha string, size int64) {
	s.ended.Store(true)
	s.wd.progress() // the answer is due within the idle timeout from now
	key := streamKey(s.Peer.ID, sha)
	s.repl.streaming.Store(key, s)
	go func() {
		select {
		case <-s.started:
			s.req.Trailer[TrailerSHA][0] = sha
			s.req.Trailer[HeaderSize][0] = strconv.FormatInt(size, 10)
			s.pipe.CloseWithError(nil)
		case <-s.done:
			// The push ended before sending anything: nothing to declare.
		}
		<-s.done
		s.repl.streaming.CompareAndDelete(key, s)
		s.cancel()
	}()
}

// outlive lets an ended stream go on after the upload's context ends, for
// at most the Replicator's straggler timeout: the upload no longer waits
// for this peer.
func (s *Stream) outlive() {
	s.outliving.Store(true)
	s.detach()
	timer := time.AfterFunc(s.timeout, s.cancel)
	go func() {
		<-s.done
		timer.Stop()
	}()
}

// connected reports whether the peer has started to take the stream.
func (s *Stream) connected() bool {
	select {
	case <-s.started:
		return true
	default:
		return false
	}
}

// Abort ends the stream without a valid end, so the peer keeps nothing,
// and waits for the push to stop. Aborting an ended stream does nothing.
func (s *Stream) Abort(cause error) {
	s.pipe.CloseWithError(fmt.Errorf("blob stream aborted: %w", cause))
	s.cancel()
	s.detach()
	<-s.done
}

// failed reports whether the push already ended, which before its end can
// only be a failure.
func (s *Stream) failed() bool { return s.pipe.ReaderClosed() }
