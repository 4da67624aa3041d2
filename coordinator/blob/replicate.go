package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNotReplicated means fewer nodes than required hold a blob.
var ErrNotReplicated = errors.New("blob not replicated to enough nodes")

// DefaultStragglerTimeout bounds the pushes Replicate leaves running once
// enough nodes hold the blob, when Replicator.StragglerTimeout is zero.
const DefaultStragglerTimeout = 10 * time.Minute

// DefaultIdleTimeout aborts a transfer whose peer makes no progress for
// this long, when Replicator.IdleTimeout is zero.
const DefaultIdleTimeout = 30 * time.Second

// DefaultRepairTimeout bounds the repair of one blob, when
// Replicator.RepairTimeout is zero.
const DefaultRepairTimeout = 10 * time.Minute

// Peer is another coordinator that holds blobs.
type Peer struct {
	// ID is the peer's node id, as reported in replica lists.
	ID string
	// Addr is host:port of the peer's RPC listener, where its Handler is
	// mounted (http://Addr/blobs/...).
	Addr string
}

// Replicator copies blobs between this node's Store and its peers. Set the
// exported fields before use; the zero values of Client and Logger mean
// http.DefaultClient and no logging.
type Replicator struct {
	// Store is this node's blob store.
	Store *Store
	// Self is this node's id, counted as a holder by Replicate.
	Self string
	// Peers lists the other nodes, asked afresh on every call.
	Peers func() []Peer
	// Scheme is "http" (the default) or "https".
	Scheme string
	// Client makes the transfers. It should not have an overall Timeout
	// shorter than a large blob's transfer; contexts bound each call.
	Client *http.Client
	// Logger receives transfer failures and repairs.
	Logger *slog.Logger
	// StragglerTimeout bounds the pushes that Replicate leaves running in
	// the background once enough nodes hold the blob (zero: 10 minutes).
	// Too short and the remaining peers get their copy from Repair instead.
	StragglerTimeout time.Duration
	// IdleTimeout aborts a push, fetch or stream whose peer makes no
	// progress for that long while it is the peer's turn: it reads none of
	// the bytes waiting for it, sends none of a blob, or does not answer
	// once it has them all (zero: 30 seconds). It must exceed a peer's
	// fsync of a large blob; too long and a stalled peer holds an upload,
	// or the repair loop, that long.
	IdleTimeout time.Duration
	// RepairTimeout bounds the fetch of one blob by Repair, so that a peer
	// that trickles bytes cannot hold the loop (zero: 10 minutes). Too
	// short and large blobs are never repaired.
	RepairTimeout time.Duration

	mu      sync.Mutex
	fetches map[string]*fetchCall // in-flight Fetch per sha
	// streaming holds the streams whose content has ended and whose peer
	// has not answered yet, by peer and sha: a push to that peer waits for
	// the stream rather than send the same bytes again.
	streaming sync.Map
	// outliving counts, by peer id, the upload streams running on after
	// their upload returned (*atomic.Int32; Fanout.straggle).
	outliving sync.Map
}

func streamKey(peer, sha string) string { return peer + "/" + sha }

type fetchCall struct {
	done chan struct{}
	err  error
}

func (r *Replicator) client() *http.Client {
	if r.Client != nil {
		return r.Client
	}
	return http.DefaultClient
}

func (r *Replicator) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// peers returns the peers other than self.
func (r *Replicator) peers() []Peer {
	if r.Peers == nil {
		return nil
	}
	var out []Peer
	for _, p := range r.Peers() {
		if p.ID != r.Self {
			out = append(out, p)
		}
	}
	return out
}

func (r *Replicator) blobURL(p Peer, sha string) string {
	scheme := r.Scheme
	if scheme == "" {
		scheme = "http"
	}
	return scheme + "://" + p.Addr + PathPrefix + sha
}

// idleTimeout is IdleTimeout or its default.
func (r *Replicator) idleTimeout() time.Duration {
	if r.IdleTimeout > 0 {
		return r.IdleTimeout
	}
	return DefaultIdleTimeout
}

// repairTimeout is RepairTimeout or its default.
func (r *Replicator) repairTimeout() time.Duration {
	if r.RepairTimeout > 0 {
		return r.RepairTimeout
	}
	return DefaultRepairTimeout
}

// stragglerTimeout is StragglerTimeout or its default.
func (r *Replicator) stragglerTimeout() time.Duration {
	if r.StragglerTimeout > 0 {
		return r.StragglerTimeout
	}
	return DefaultStragglerTimeout
}

// Replicate pushes a local blob to all peers in parallel and returns once
// need nodes, this one included, hold it: the ids holding it, this node
// first. Every copy it counts, found or pushed, has its GC grace restarted
// (the local one again as it returns, however long the pushes took), so a
// caller that commits a reference within the grace keeps them all. Pushes
// still running then go on in the background (bounded by
// StragglerTimeout). If need cannot be reached, or ctx ends first, the
// error wraps ErrNotReplicated and the ids that did succeed are returned.
func (r *Replicator) Replicate(ctx context.Context, sha string, need int) ([]string, error) {
	// The local copy counts as a holder: restart its GC grace too.
	size, ok := r.Store.Hold(sha)
	if !ok {
		return nil, fmt.Errorf("replicate blob %s: %w", sha, ErrNotFound)
	}
	holders := []string{r.Self}
	if need <= 1 {
		return holders, nil
	}
	// The pushes may outlast the GC grace the Hold above started: hold the
	// local copy again once they are done, and fail if it is gone.
	rehold := func() ([]string, error) {
		if _, ok := r.Store.Hold(sha); !ok {
			return holders[1:], notReplicated(sha, len(holders)-1, need,
				[]error{fmt.Errorf("local copy gone during the push: %w", ErrNotFound)})
		}
		return holders, nil
	}
	pushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.stragglerTimeout())
	type result struct {
		id  string
		err error
	}
	peers := r.peers()
	results := make(chan result, len(peers))
	for _, p := range peers {
		go func() { results <- result{p.ID, r.push(pushCtx, p, sha, size)} }()
	}
	pending := len(peers)
	var errs []error
	for len(holders) < need && len(holders)+pending >= need {
		select {
		case res := <-results:
			pending--
			if res.err != nil {
				errs = append(errs, fmt.Errorf("peer %s: %w", res.id, res.err))
				r.log().Warn("blob push failed", "sha", sha, "peer", res.id, "err", res.err)
				continue
			}
			holders = append(holders, res.id)
		case <-ctx.Done():
			cancel()
			errs = append(errs, ctx.Err())
			return holders, notReplicated(sha, len(holders), need, errs)
		}
	}
	if len(holders) < need {
		cancel()
		return holders, notReplicated(sha, len(holders), need, errs)
	}
	go func() {
		defer cancel()
		for range pending {
			if res := <-results; res.err != nil {
				r.log().Warn("background blob push failed; repair will retry", "sha", sha, "peer", res.id, "err", res.err)
			}
		}
	}()
	slices.Sort(holders[1:])
	return rehold()
}

func notReplicated(sha string, have, need int, errs []error) error {
	err := fmt.Errorf("replicate blob %s: %d of %d nodes hold it: %w", sha, have, need, ErrNotReplicated)
	return errors.Join(append([]error{err}, errs...)...)
}

// push makes sure peer p holds the blob: a HEAD first, and a streamed PUT
// from the verified local copy when it does not; the PUT is aborted once
// the peer makes no progress for the idle timeout.
func (r *Replicator) push(ctx context.Context, p Peer, sha string, size int64) error {
	has, err := r.peerHas(ctx, p, sha, size)
	if err != nil {
		return err
	}
	if has {
		return nil
	}
	// An upload's stream may still be delivering this blob to p (a slow
	// disk): its outcome decides, and only a failed stream needs a PUT.
	if v, ok := r.streaming.Load(streamKey(p.ID, sha)); ok {
		s := v.(*Stream)
		select {
		case <-s.done:
			if s.err == nil {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("wait for the stream to %s: %w", p.ID, ctx.Err())
		}
	}
	rc, err := r.Store.Open(sha)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := newWatchdog(r.idleTimeout(), nil, cancel)
	defer wd.stop()
	var body io.ReadCloser = struct {
		io.Reader
		io.Closer
	}{&progressReader{r: rc, wd: wd}, rc}
	if size == 0 {
		_ = rc.Close()
		body = http.NoBody
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, r.blobURL(p, sha), body)
	if err != nil {
		_ = body.Close()
		return fmt.Errorf("put blob: %w", err)
	}
	req.ContentLength = size
	req.Header.Set(HeaderSize, strconv.FormatInt(size, 10))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := r.client().Do(req)
	if err != nil {
		return fmt.Errorf("put blob: %w", wd.explain(err))
	}
	defer drainClose(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("put blob: %s", statusError(resp))
	}
	return nil
}

// peerHas asks p whether it holds the blob with the given size; a peer
// that does not answer within the idle timeout is an error.
func (r *Replicator) peerHas(ctx context.Context, p Peer, sha string, size int64) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := newWatchdog(r.idleTimeout(), nil, cancel)
	defer wd.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, r.blobURL(p, sha), nil)
	if err != nil {
		return false, fmt.Errorf("head blob: %w", err)
	}
	resp, err := r.client().Do(req)
	if err != nil {
		return false, fmt.Errorf("head blob: %w", wd.explain(err))
	}
	drainClose(resp.Body)
	return resp.StatusCode == http.StatusOK && resp.Header.Get(HeaderSize) == strconv.FormatInt(size, 10), nil
}

// Ensure returns at once if the blob is here, else fetches it from a peer.
func (r *Replicator) Ensure(ctx context.Context, sha string) error {
	if r.Store.Has(sha) {
		return nil
	}
	return r.Fetch(ctx, sha)
}

// Open is Store.Open after Ensure. A copy found corrupt on opening is
// fetched again once.
func (r *Replicator) Open(ctx context.Context, sha string) (io.ReadCloser, error) {
	return r.ensureOpen(ctx, sha, func() (io.ReadCloser, error) { return r.Store.Open(sha) })
}

// OpenRange is Store.OpenRange after Ensure. A copy found corrupt on
// opening is fetched again once.
func (r *Replicator) OpenRange(ctx context.Context, sha string, offset, length int64) (io.ReadCloser, error) {
	return r.ensureOpen(ctx, sha, func() (io.ReadCloser, error) { return r.Store.OpenRange(sha, offset, length) })
}

func (r *Replicator) ensureOpen(ctx context.Context, sha string, open func() (io.ReadCloser, error)) (io.ReadCloser, error) {
	if err := r.Ensure(ctx, sha); err != nil {
		return nil, err
	}
	rc, err := open()
	if !errors.Is(err, ErrCorrupt) {
		return rc, err
	}
	r.log().Warn("local blob corrupt; fetching it again", "sha", sha, "err", err)
	if err := r.Ensure(ctx, sha); err != nil {
		return nil, err
	}
	return open()
}

// Fetch gets a blob from the first peer (in random order) that has it,
// verifying it as it is stored. It returns nil if the blob is already
// here, and an error wrapping ErrNotFound if no peer has it. Concurrent
// fetches of one blob share a single transfer.
func (r *Replicator) Fetch(ctx context.Context, sha string) error {
	if err := checkSHA(sha); err != nil {
		return err
	}
	for {
		r.mu.Lock()
		c, busy := r.fetches[sha]
		if !busy {
			if r.fetches == nil {
				r.fetches = make(map[string]*fetchCall)
			}
			c = &fetchCall{done: make(chan struct{})}
			r.fetches[sha] = c
			r.mu.Unlock()
			c.err = r.fetch(ctx, sha)
			r.mu.Lock()
			delete(r.fetches, sha)
			r.mu.Unlock()
			close(c.done)
			return c.err
		}
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return fmt.Errorf("fetch blob %s: %w", sha, ctx.Err())
		}
		ownerGaveUp := errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)
		if c.err == nil || !ownerGaveUp || ctx.Err() != nil {
			return c.err
		}
		// The caller that ran the transfer gave up; try again under ctx.
	}
}

func (r *Replicator) fetch(ctx context.Context, sha string) error {
	if r.Store.Has(sha) {
		return nil
	}
	peers := r.peers()
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	var errs []error
	missing := 0
	for _, p := range peers {
		err := r.fetchFrom(ctx, p, sha)
		if err == nil {
			r.log().Info("blob fetched", "sha", sha, "peer", p.ID)
			return nil
		}
		if errors.Is(err, ErrNotFound) {
			missing++
		} else {
			r.log().Warn("blob fetch failed", "sha", sha, "peer", p.ID, "err", err)
		}
		errs = append(errs, fmt.Errorf("peer %s: %w", p.ID, err))
		if ctx.Err() != nil {
			break
		}
	}
	if missing == len(peers) {
		return errors.Join(append([]error{fmt.Errorf("fetch blob %s: no peer has it: %w", sha, ErrNotFound)}, errs...)...)
	}
	return errors.Join(append([]error{fmt.Errorf("fetch blob %s from %d peers", sha, len(peers))}, errs...)...)
}

// fetchFrom streams the blob from p into the store, verifying it. The
// transfer is aborted once the peer sends nothing for the idle timeout.
func (r *Replicator) fetchFrom(ctx context.Context, p Peer, sha string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := newWatchdog(r.idleTimeout(), nil, cancel)
	defer wd.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.blobURL(p, sha), nil)
	if err != nil {
		return fmt.Errorf("get blob: %w", err)
	}
	resp, err := r.client().Do(req)
	if err != nil {
		return fmt.Errorf("get blob: %w", wd.explain(err))
	}
	defer drainClose(resp.Body)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return ErrNotFound
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("get blob: %s", statusError(resp))
	}
	size, err := strconv.ParseInt(resp.Header.Get(HeaderSize), 10, 64)
	if err != nil || size < 0 || (resp.ContentLength >= 0 && resp.ContentLength != size) {
		return fmt.Errorf("get blob: bad size headers %s=%q Content-Length=%d", HeaderSize, resp.Header.Get(HeaderSize), resp.ContentLength)
	}
	if _, err := r.Store.IngestExpected(&progressReader{r: resp.Body, wd: wd}, sha, size); err != nil {
		return wd.explain(err)
	}
	return nil
}

// statusError describes a failed response with the start of its body.
func statusError(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return strings.TrimSpace(resp.Status + ": " + string(b))
}

// drainClose reads a little of what is left so the connection can be
// reused, then closes the body.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}
