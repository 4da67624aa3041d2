package blob

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// streamUpload ingests b on c[0] while streaming it to the peers, as an
// upload does, and returns the peers that hold a copy after Finish.
func streamUpload(t *testing.T, c []*node, b []byte, want int) (string, []string) {
	t.Helper()
	fan := c[0].repl.StreamToPeers(context.Background(), want)
	ref, err := c[0].store.IngestTee(bytesReader(b), fan)
	if err != nil {
		fan.Abort(err)
		t.Fatalf("ingest: %v", err)
	}
	return ref.Sha256, fan.Finish(ref.Sha256, ref.Bytes)
}

func TestStreamedReplicasMatch(t *testing.T) {
	c := newCluster(t, 3)
	for _, size := range []int{0, 1, BlockSize, 3*BlockSize + 17} {
		b := randBytes(size, uint64(size))
		sha, holders := streamUpload(t, c, b, 1)
		if len(holders) < 1 || !slices.IsSorted(holders) {
			t.Fatalf("size %d: holders %v, want at least one peer", size, holders)
		}
		// The other stream completes on its own, after Finish returned.
		for _, nd := range c[1:] {
			waitFor(t, nd.id+" to hold the streamed copy", func() bool { return nd.store.Has(sha) })
			got, err := readAll(nd.store, sha)
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("size %d: replica on %s: %v", size, nd.id, err)
			}
		}
	}
	if n := c[1].puts.Load() + c[2].puts.Load(); n != 0 {
		t.Fatalf("%d PUTs: streamed replicas should need no push", n)
	}
}

// TestStreamFinishWaitsOnlyForEnough: a peer slow to take its stream (a
// slow disk) does not hold up an upload that enough other peers hold; its
// push completes in the background, after the upload's context ended, and
// a Replicate meanwhile waits for that stream instead of sending the bytes
// again.
func TestStreamFinishWaitsOnlyForEnough(t *testing.T) {
	c := newCluster(t, 3)
	gate := make(chan struct{})
	c[1].postGate.Store(&gate)
	ctx, cancel := context.WithCancel(context.Background())
	fan := c[0].repl.StreamToPeers(ctx, 1)
	b := randBytes(BlockSize+3, 44)
	ref, err := c[0].store.IngestTee(bytesReader(b), fan)
	if err != nil {
		t.Fatalf("ingest: %v", err)
	}
	if holders := fan.Finish(ref.Sha256, ref.Bytes); !slices.Equal(holders, []string{"n2"}) {
		t.Fatalf("holders %v, want n2 alone while n1 is held", holders)
	}
	cancel() // the upload is over
	type replicated struct {
		holders []string
		err     error
	}
	done := make(chan replicated, 1)
	go func() {
		h, err := c[0].repl.Replicate(context.Background(), ref.Sha256, 3)
		done <- replicated{h, err}
	}()
	close(gate)
	if r := <-done; r.err != nil || len(r.holders) != 3 {
		t.Fatalf("replicate to all three = %v, %v", r.holders, r.err)
	}
	waitFor(t, "the slow peer's stream to complete in the background", func() bool { return c[1].store.Has(ref.Sha256) })
	if got, err := readAll(c[1].store, ref.Sha256); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("replica on n1: %v", err)
	}
	if n := c[1].puts.Load(); n != 0 {
		t.Fatalf("%d PUTs to n1: its stream should have sufficed", n)
	}
}

// TestStreamFinishEndsWithTheUpload: while the upload still waits for the
// peers it needs, its context ending (the client went away) ends the wait.
func TestStreamFinishEndsWithTheUpload(t *testing.T) {
	c := newCluster(t, 2)
	gate := make(chan struct{})
	defer close(gate)
	c[1].postGate.Store(&gate)
	ctx, cancel := context.WithCancel(context.Background())
	fan := c[0].repl.StreamToPeers(ctx, 1)
	ref, err := c[0].store.IngestTee(bytesReader(randBytes(100, 45)), fan)
	if err != nil {
		t.Fatalf("ingest: %v", err)
	}
	done := make(chan []string, 1)
	go func() { done <- fan.Finish(ref.Sha256, ref.Bytes) }()
	cancel()
	if holders := <-done; len(holders) != 0 {
		t.Fatalf("holders %v after the upload ended, want none", holders)
	}
}

func TestStreamAbortKeepsNothing(t *testing.T) {
	c := newCluster(t, 3)
	fan := c[0].repl.StreamToPeers(context.Background(), 1)
	b := randBytes(2*BlockSize, 40)
	_, _ = fan.Write(b[:BlockSize])
	fan.Abort(errors.New("client went away"))
	for _, nd := range c[1:] {
		// The peer notices the broken stream on its own time.
		waitFor(t, nd.id+" dropping the aborted stream's temp files", func() bool {
			tmp, _ := os.ReadDir(nd.store.tmpDir)
			return len(tmp) == 0
		})
		if list, _ := nd.store.List(); len(list) != 0 {
			t.Fatalf("%s kept %v from an aborted stream", nd.id, list)
		}
	}
}

func TestStreamWrongTrailerKeepsNothing(t *testing.T) {
	c := newCluster(t, 2)
	b := randBytes(BlockSize+5, 41)
	fan := c[0].repl.StreamToPeers(context.Background(), 1)
	_, _ = fan.Write(b)
	if holders := fan.Finish(shaOf([]byte("other content")), int64(len(b))); len(holders) != 0 {
		t.Fatalf("holders %v for a stream whose trailer lies", holders)
	}
	if list, _ := c[1].store.List(); len(list) != 0 {
		t.Fatalf("peer kept %v", list)
	}
}

func TestStreamWithoutTrailerRefused(t *testing.T) {
	c := newCluster(t, 1)
	resp, err := http.Post(c[0].srv.URL+PathPrefix, "application/octet-stream", strings.NewReader("no trailers"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	if list, _ := c[0].store.List(); len(list) != 0 {
		t.Fatalf("kept %v", list)
	}
}

func TestStreamDropsAStalledPeerWhileAnotherKeepsUp(t *testing.T) {
	c := newCluster(t, 3)
	c[1].stall.Store(true)
	b := randBytes(4*streamBuffer, 42)
	sha, holders := streamUpload(t, c, b, 1)
	if !slices.Equal(holders, []string{"n2"}) {
		t.Fatalf("holders %v, want only the peer that kept up", holders)
	}
	if c[1].store.Has(sha) {
		t.Fatal("stalled peer holds the blob")
	}
	// The dropped peer is brought up to date by the ordinary push.
	c[1].stall.Store(false)
	got, err := c[0].repl.Replicate(context.Background(), sha, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("replicate after the stream: %v, %v", got, err)
	}
}

func TestStreamToDeadPeerDoesNotFailTheUpload(t *testing.T) {
	c := newCluster(t, 3)
	c[2].srv.Close()
	b := randBytes(2*BlockSize, 43)
	sha, holders := streamUpload(t, c, b, 1)
	if !slices.Equal(holders, []string{"n1"}) {
		t.Fatalf("holders %v, want n1", holders)
	}
	if got, err := readAll(c[1].store, sha); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("replica on n1: %v", err)
	}
}

// TestStreamAbortsPeerThatStopsReading: with no peer to spare, an upload
// waits for its stream, but not on a peer that stopped reading: after the
// idle timeout the stream fails, the ingest completes, and Replicate,
// whose push the peer does not answer either, fails instead of hanging.
func TestStreamAbortsPeerThatStopsReading(t *testing.T) {
	c := newCluster(t, 2)
	c[0].repl.IdleTimeout = 200 * time.Millisecond
	c[1].stall.Store(true)
	c[1].hang.Store(true)
	b := randBytes(4*streamBuffer, 46)
	var sha string
	var holders []string
	within(t, 20*time.Second, "an upload streamed to a peer that stopped reading", func() {
		sha, holders = streamUpload(t, c, b, 1)
	})
	if len(holders) != 0 {
		t.Fatalf("holders %v, want none", holders)
	}
	var err error
	within(t, 20*time.Second, "Replicate to a peer that does not answer", func() {
		_, err = c[0].repl.Replicate(context.Background(), sha, 2)
	})
	if !errors.Is(err, ErrNotReplicated) || !errors.Is(err, errStalled) {
		t.Fatalf("Replicate = %v, want ErrNotReplicated from a stalled push", err)
	}
}

// TestStreamFinishGivesUpOnSilentPeer: a peer that takes the whole stream
// but never answers does not hold Finish while the upload's context lives
// on (the server does not end it while the handler is not reading).
func TestStreamFinishGivesUpOnSilentPeer(t *testing.T) {
	c := newCluster(t, 2)
	c[0].repl.IdleTimeout = 200 * time.Millisecond
	gate := make(chan struct{})
	defer close(gate)
	c[1].postGate.Store(&gate)
	var holders []string
	within(t, 10*time.Second, "Finish with a peer that never answers", func() {
		_, holders = streamUpload(t, c, randBytes(100, 47), 1)
	})
	if len(holders) != 0 {
		t.Fatalf("holders %v, want none", holders)
	}
}
