package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// node is one coordinator's store, served over HTTP.
type node struct {
	id    string
	store *Store
	srv   *httptest.Server
	repl  *Replicator
	puts  atomic.Int64
	gets  atomic.Int64
	// hang, when set, makes PUTs block until the client gives up.
	hang atomic.Bool
	// gate, when set, holds HEADs (the first step of a push) until closed.
	gate atomic.Pointer[chan struct{}]
	// stall, when set, makes streamed POSTs wait, reading nothing, until
	// the client gives up.
	stall atomic.Bool
	// postGate, when set, holds streamed POSTs, before they are read,
	// until closed: a peer slow to take and answer its stream.
	postGate atomic.Pointer[chan struct{}]
	posts    atomic.Int64
	heads    atomic.Int64
}

// newCluster starts n nodes, each replicating to all the others.
func newCluster(t *testing.T, n int) []*node {
	t.Helper()
	nodes := make([]*node, n)
	release := make(chan struct{})
	for i := range nodes {
		nd := &node{id: fmt.Sprintf("n%d", i), store: newStore(t)}
		h := nd.store.Handler()
		nd.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.Method {
			case http.MethodPut:
				nd.puts.Add(1)
				if nd.hang.Load() {
					// The server only notices a client giving up once
					// the body is consumed, so drain it, then hang.
					_, _ = io.Copy(io.Discard, r.Body)
					select {
					case <-r.Context().Done():
					case <-release:
					}
					return
				}
			case http.MethodHead:
				nd.heads.Add(1)
				if g := nd.gate.Load(); g != nil {
					select {
					case <-*g:
					case <-release:
					}
				}
			case http.MethodGet:
				nd.gets.Add(1)
			case http.MethodPost:
				nd.posts.Add(1)
				if g := nd.postGate.Load(); g != nil {
					select {
					case <-*g:
					case <-release:
					case <-r.Context().Done():
					}
				}
				if nd.stall.Load() {
					select {
					case <-r.Context().Done():
					case <-release:
					}
					return
				}
			}
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(nd.srv.Close)
		nodes[i] = nd
	}
	t.Cleanup(func() { close(release) }) // runs before the servers close
	for _, nd := range nodes {
		nd.repl = &Replicator{
			Store:  nd.store,
			Self:   nd.id,
			Client: &http.Client{},
			Peers: func() []Peer {
				var ps []Peer
				for _, o := range nodes {
					ps = append(ps, Peer{ID: o.id, Addr: strings.TrimPrefix(o.srv.URL, "http://")})
				}
				return ps // includes self, which the replicator must skip
			},
		}
	}
	return nodes
}

// waitFor polls cond until it holds or the test's patience runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReplicateQuorumWithPeerDown(t *testing.T) {
	c := newCluster(t, 3)
	b := randBytes(2*BlockSize+3, 30)
	sha := ingest(t, c[0].store, b)
	c[2].srv.Close()

	got, err := c[0].repl.Replicate(context.Background(), sha, 2)
	if err != nil {
		t.Fatalf("Replicate need=2 with one peer down: %v", err)
	}
	// Replicate gives up as soon as need is out of reach, so n1's push
	// may or may not have finished by then.
	if !slices.Equal(got, []string{"n0"}) && !slices.Equal(got, []string{"n0", "n1"}) {
		t.Fatalf("holders = %v, want n0 and at most n1", got)
	}
	data, err := readAll(c[1].store, sha)
	if err != nil || !bytes.Equal(data, b) {
		t.Fatalf("replica on n1 unreadable: %v", err)
	}
}

func TestReplicateAllFailsWithPeerDown(t *testing.T) {
	c := newCluster(t, 3)
	sha := ingest(t, c[0].store, randBytes(BlockSize, 31))
	c[2].srv.Close()

	got, err := c[0].repl.Replicate(context.Background(), sha, 3)
	if !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Replicate need=3 with one peer down: err = %v, want ErrNotReplicated", err)
	}
	// Replicate gives up as soon as need is out of reach, so n1's push
	// may or may not have finished by then.
	if !slices.Equal(got, []string{"n0"}) && !slices.Equal(got, []string{"n0", "n1"}) {
		t.Fatalf("holders = %v, want n0 and at most n1", got)
	}
}

func TestReplicateAllPeersEventually(t *testing.T) {
	c := newCluster(t, 3)
	sha := ingest(t, c[0].store, randBytes(BlockSize+1, 32))
	gate := make(chan struct{})
	c[2].gate.Store(&gate)
	got, err := c[0].repl.Replicate(context.Background(), sha, 2)
	if err != nil || !slices.Equal(got, []string{"n0", "n1"}) {
		t.Fatalf("Replicate = %v, %v; want [n0 n1]", got, err)
	}
	if c[2].store.Has(sha) {
		t.Fatal("gated peer already holds the blob")
	}
	// The push Replicate did not wait for still completes afterwards.
	close(gate)
	waitFor(t, "third replica", func() bool { return c[2].store.Has(sha) })
}

func TestReplicateSkipsPeerThatHasIt(t *testing.T) {
	c := newCluster(t, 3)
	b := randBytes(BlockSize+2, 33)
	sha := ingest(t, c[0].store, b)
	ingest(t, c[1].store, b)
	ingest(t, c[2].store, b)
	got, err := c[0].repl.Replicate(context.Background(), sha, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("Replicate = %v, %v", got, err)
	}
	if n := c[1].puts.Load() + c[2].puts.Load(); n != 0 {
		t.Fatalf("%d PUTs to peers that already held the blob", n)
	}
}

func TestReplicateDeadline(t *testing.T) {
	c := newCluster(t, 3)
	sha := ingest(t, c[0].store, randBytes(BlockSize, 34))
	c[1].hang.Store(true)
	c[2].hang.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	got, err := c[0].repl.Replicate(ctx, sha, 2)
	if !errors.Is(err, ErrNotReplicated) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrNotReplicated and DeadlineExceeded", err)
	}
	if len(got) != 1 {
		t.Fatalf("holders = %v", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Replicate took %v past a 100ms deadline", d)
	}
}

func TestReplicateMissingLocal(t *testing.T) {
	c := newCluster(t, 2)
	if _, err := c[0].repl.Replicate(context.Background(), shaOf([]byte("nope")), 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestFetch(t *testing.T) {
	c := newCluster(t, 3)
	b := randBytes(3*BlockSize+11, 35)
	sha := ingest(t, c[2].store, b)
	if err := c[0].repl.Fetch(context.Background(), sha); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	data, err := readAll(c[0].store, sha)
	if err != nil || !bytes.Equal(data, b) {
		t.Fatalf("fetched copy unreadable: %v", err)
	}
	gets := c[1].gets.Load() + c[2].gets.Load()
	if err := c[0].repl.Ensure(context.Background(), sha); err != nil {
		t.Fatal(err)
	}
	rc, err := c[0].repl.OpenRange(context.Background(), sha, BlockSize-1, 2)
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.Close()
	if now := c[1].gets.Load() + c[2].gets.Load(); now != gets {
		t.Fatal("Ensure of a present blob went to the network")
	}
	if err := c[0].repl.Fetch(context.Background(), shaOf([]byte("nobody"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch of an unknown blob: err = %v, want ErrNotFound", err)
	}
}

func TestFetchSkipsCorruptPeer(t *testing.T) {
	c := newCluster(t, 3)
	b := randBytes(2*BlockSize+5, 36)
	sha := ingest(t, c[1].store, b)
	ingest(t, c[2].store, b)
	flipByte(t, c[1].store.path(sha), BlockSize+3) // late block: the body is cut short
	for i := 0; i < 4; i++ {                       // peer order is random: cover both
		if err := c[0].store.Delete(sha); err != nil {
			t.Fatal(err)
		}
		if err := c[0].repl.Fetch(context.Background(), sha); err != nil {
			t.Fatalf("Fetch with one corrupt peer: %v", err)
		}
		data, err := readAll(c[0].store, sha)
		if err != nil || !bytes.Equal(data, b) {
			t.Fatalf("fetched copy bad: %v", err)
		}
	}
	if len(allFiles(t, c[0].store.tmpDir)) != 0 {
		t.Fatal("temp files left by failed fetches")
	}
}

func TestReplicatorOpenFetches(t *testing.T) {
	c := newCluster(t, 2)
	b := randBytes(BlockSize+9, 37)
	sha := ingest(t, c[1].store, b)
	rc, err := c[0].repl.Open(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(rc); err != nil || !bytes.Equal(buf.Bytes(), b) {
		t.Fatalf("Replicator.Open read: %v", err)
	}
}

func TestFetchConcurrent(t *testing.T) {
	c := newCluster(t, 2)
	b := randBytes(4*BlockSize, 38)
	sha := ingest(t, c[1].store, b)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c[0].repl.Ensure(context.Background(), sha)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if data, err := readAll(c[0].store, sha); err != nil || !bytes.Equal(data, b) {
		t.Fatalf("copy after concurrent fetches: %v", err)
	}
}

// within runs f and fails the test if it has not returned after d: the
// bugs these tests guard against are hangs.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s still running after %v", what, d)
	}
}

// stalledPeer serves GET of any blob by sending its headers and the first
// bytes of a size-byte body, then nothing: a peer whose disk or network
// hung mid-transfer. With trickle set it sends one more byte now and then
// instead, never reaching the end. Other blobs are 404.
func stalledPeer(t *testing.T, sha string, size int64, trickle bool) Peer {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != PathPrefix+sha {
			http.NotFound(w, r)
			return
		}
		w.Header().Set(HeaderSize, fmt.Sprint(size))
		w.Header().Set("Content-Length", fmt.Sprint(size))
		_, _ = w.Write(make([]byte, 1000))
		http.NewResponseController(w).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-release:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if trickle {
				_, _ = w.Write([]byte{0})
				http.NewResponseController(w).Flush()
			}
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before the server closes
	return Peer{ID: "stalled", Addr: strings.TrimPrefix(srv.URL, "http://")}
}

// TestFetchAbortsStalledPeer: a peer that stops sending mid-blob is given
// up after the idle timeout, and fetches that joined its transfer end with
// it instead of waiting on it for good.
func TestFetchAbortsStalledPeer(t *testing.T) {
	s := newStore(t)
	sha := shaOf([]byte("never arrives whole"))
	peer := stalledPeer(t, sha, 4*BlockSize, false)
	r := &Replicator{Store: s, Self: "n0", Client: &http.Client{}, IdleTimeout: 200 * time.Millisecond,
		Peers: func() []Peer { return []Peer{peer} }}
	errs := make(chan error, 3)
	within(t, 10*time.Second, "fetches from a stalled peer", func() {
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { errs <- r.Ensure(context.Background(), sha) })
		}
		wg.Wait()
	})
	close(errs)
	for err := range errs {
		if !errors.Is(err, errStalled) {
			t.Fatalf("fetch from a stalled peer: err = %v, want errStalled", err)
		}
	}
	if files := allFiles(t, s.Dir()); len(files) != 0 {
		t.Fatalf("files kept from a stalled fetch: %v", files)
	}
}

// TestRepairBoundsEachBlob: a peer that trickles a blob, too slowly to ever
// finish yet never idle, costs its blob's repair deadline, not the pass:
// the next blob is repaired and Repair returns.
func TestRepairBoundsEachBlob(t *testing.T) {
	c := newCluster(t, 2)
	good := randBytes(BlockSize+3, 60)
	shaGood := ingest(t, c[1].store, good)
	shaSlow := shaOf([]byte("only on the trickling peer"))
	// Sort so the trickled blob comes first in the pass.
	for shaSlow > shaGood {
		shaSlow = shaOf([]byte(shaSlow))
	}
	slow := stalledPeer(t, shaSlow, 4*BlockSize, true)
	peers := c[0].repl.Peers
	c[0].repl.Peers = func() []Peer { return append(peers(), slow) }
	c[0].repl.RepairTimeout = 300 * time.Millisecond
	var n int
	var err error
	within(t, 10*time.Second, "Repair with a trickling peer", func() {
		n, err = c[0].repl.Repair(context.Background(), map[string]struct{}{shaSlow: {}, shaGood: {}})
	})
	if n != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Repair = %d, %v; want 1 and the trickled blob's deadline", n, err)
	}
	if got, err := readAll(c[0].store, shaGood); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("repaired blob: %v", err)
	}
}

// TestReplicateHoldsLocalCopyAfterPush: a push that outlasts the GC grace
// does not leave the local copy Replicate counted at GC's mercy.
func TestReplicateHoldsLocalCopyAfterPush(t *testing.T) {
	c := newCluster(t, 2)
	sha := ingest(t, c[0].store, randBytes(BlockSize, 61))
	gate := make(chan struct{})
	c[1].gate.Store(&gate)
	type replicated struct {
		holders []string
		err     error
	}
	done := make(chan replicated, 1)
	go func() {
		h, err := c[0].repl.Replicate(context.Background(), sha, 2)
		done <- replicated{h, err}
	}()
	waitFor(t, "the push to start", func() bool { return c[1].heads.Load() > 0 })
	age(t, c[0].store, sha, 2*time.Hour) // the push took longer than the grace
	close(gate)
	if r := <-done; r.err != nil || len(r.holders) != 2 {
		t.Fatalf("Replicate = %v, %v", r.holders, r.err)
	}
	if n, err := c[0].repl.GC(nil, time.Hour); err != nil || n != 0 || !c[0].store.Has(sha) {
		t.Fatalf("GC right after Replicate deleted %d (err %v); local copy present %v", n, err, c[0].store.Has(sha))
	}
}
