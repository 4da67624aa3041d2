package blob

import (
	"context"
	"errors"
	"slices"
	"sync"
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
// upload can be acknowledged.
type Fanout struct {
	want    int
	streams []*Stream
}

// StreamToPeers starts a Stream to every peer; want is how many peers must
// hold the blob for it to count as replicated (a majority less this node).
func (r *Replicator) StreamToPeers(ctx context.Context, want int) *Fanout {
	f := &Fanout{want: want}
	for _, p := range r.peers() {
		f.streams = append(f.streams, r.Stream(ctx, p))
	}
	return f
}

// Write hands b to every live stream; it never fails.
func (f *Fanout) Write(b []byte) (int, error) {
	var waitOn []*Stream
	for _, s := range f.streams {
		if s.failed() || s.pipe.TryWrite(b) {
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
// want of them do (or every stream has ended). A slower peer's push goes on
// in the background, bounded by the straggler timeout, so one slow disk
// does not hold up every upload; Replicate counts it later if it is done.
func (f *Fanout) Finish(sha string, size int64) []string {
	type result struct {
		id string
		ok bool
	}
	results := make(chan result, len(f.streams))
	live := 0
	for _, s := range f.streams {
		if s.failed() {
			s.Abort(errDropped) // already ended: waits for its goroutine
			continue
		}
		live++
		go func() { results <- result{s.Peer.ID, s.Finish(sha, size) == nil} }()
	}
	var holders []string
	for ; live > 0 && len(holders) < f.want; live-- {
		if r := <-results; r.ok {
			holders = append(holders, r.id)
		}
	}
	slices.Sort(holders)
	return holders
}

// Abort ends every stream without a valid end: no peer keeps anything.
func (f *Fanout) Abort(cause error) {
	var wg sync.WaitGroup
	for _, s := range f.streams {
		wg.Go(func() { s.Abort(cause) })
	}
	wg.Wait()
}
