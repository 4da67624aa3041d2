package blob

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// errDropped aborts a stream that fell behind while enough others kept up.
var errDropped = errors.New("peer fell behind; it gets the blob after the commit")

// Fanout streams one blob to every peer while it is being received. It is
// the io.Writer to give Store.IngestTee. Peers that hold a copy when
// Finish returns count towards the blob's replicas at once; the others get
// theirs from Replicate afterwards.
//
// A slow peer does not slow the upload while enough others keep up: when a
// peer's buffer is full and more peers than want are still streaming, that
// peer's stream is dropped instead of waited for. With want or fewer left,
// writes wait for the slowest, since those copies are needed before the
// upload can be acknowledged, but never on a peer that made no progress for
// the idle timeout: its stream fails, and with too few copies Replicate
// fails the upload.
type Fanout struct {
	ctx     context.Context
	repl    *Replicator
	want    int
	streams []*Stream
}

// maxOutliving bounds the streams to one peer that may run on after their
// uploads returned; past it a straggler is aborted and the peer gets the
// blob from Replicate's push or Repair, read from disk rather than held in
// a stream's buffer.
const maxOutliving = 4

// StreamToPeers starts a Stream to every peer; want is how many peers must
// hold the blob for it to count as replicated (a majority less this node).
func (r *Replicator) StreamToPeers(ctx context.Context, want int) *Fanout {
	f := &Fanout{ctx: ctx, repl: r, want: want}
	for _, p := range r.peers() {
		f.streams = append(f.streams, r.Stream(ctx, p))
	}
	return f
}

// Write hands b to every live stream; it never fails.
func (f *Fanout) Write(b []byte) (int, error) {
	var waitOn []*Stream
	for _, s := range f.streams {
		if s.failed() || s.tryWrite(b) {
			continue
		}
		waitOn = append(waitOn, s)
	}
	for _, s := range waitOn {
		if f.live() > f.want {
			s.Abort(errDropped)
			continue
		}
		_, _ = s.Write(b)
	}
	return len(b), nil
}

// live counts the streams still running.
func (f *Fanout) live() int {
	n := 0
	for _, s := range f.streams {
		if !s.failed() {
			n++
		}
	}
	return n
}

// Finish ends every live stream with the content's sha256 and size and
// returns, sorted, the ids of peers that hold a verified copy: as soon as
// want of them do, every stream has ended, or the upload's context ends.
// Once want peers hold it, a slower peer's push goes on in the background
// (bounded by the straggler timeout, at most maxOutliving per peer), so
// one slow disk does not hold up every upload; Replicate counts it later
// if it is done, and waits for it rather than push the bytes again.
func (f *Fanout) Finish(sha string, size int64) []string {
	var live []*Stream
	for _, s := range f.streams {
		if s.failed() {
			s.Abort(errDropped) // already ended: waits for its goroutine
			continue
		}
		s.end(sha, size)
		live = append(live, s)
	}
	results := make(chan *Stream, len(live))
	for _, s := range live {
		go func() {
			<-s.done
			results <- s
		}()
	}
	answered := map[*Stream]bool{}
	var holders []string
	for len(answered) < len(live) && len(holders) < f.want {
		select {
		case s := <-results:
			answered[s] = true
			if s.err == nil {
				holders = append(holders, s.Peer.ID)
			}
		case <-f.ctx.Done():
			// The upload is over: the streams end with it.
			slices.Sort(holders)
			return holders
		}
	}
	for _, s := range live {
		if !answered[s] {
			f.straggle(s)
		}
	}
	slices.Sort(holders)
	return holders
}

// straggle lets a stream the upload no longer waits for run on, unless the
// peer never took it (unreachable: its bytes sit in the buffer) or too many
// of its streams already do; those are aborted.
func (f *Fanout) straggle(s *Stream) {
	if !s.connected() {
		go s.Abort(errDropped)
		return
	}
	n, _ := f.repl.outliving.LoadOrStore(s.Peer.ID, new(atomic.Int32))
	count := n.(*atomic.Int32)
	if count.Add(1) > maxOutliving {
		count.Add(-1)
		go s.Abort(errDropped)
		return
	}
	s.outlive()
	go func() {
		<-s.done
		count.Add(-1)
	}()
}

// Abort ends every stream without a valid end: no peer keeps anything.
func (f *Fanout) Abort(cause error) {
	var wg sync.WaitGroup
	for _, s := range f.streams {
		wg.Go(func() { s.Abort(cause) })
	}
	wg.Wait()
}
