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
