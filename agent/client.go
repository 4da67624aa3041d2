package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// errNoCoordinators means discovery knows no coordinator yet.
var errNoCoordinators = errors.New("no coordinator known")

// coordClient calls AgentService on whichever coordinator answers. Any
// coordinator serves every call, so on Unavailable or a transport error it
// moves on to another one and retries, with back-off, until the call's
// context ends.
type coordClient struct {
	discover func() []string
	// scheme is "http://" or "https://".
	scheme string
	http   *http.Client
	log    *slog.Logger

	// retryMin and retryMax bound the back-off between attempts.
	retryMin, retryMax time.Duration

	mu      sync.Mutex
	clients map[string]vbatchv1connect.AgentServiceClient
	current string
	// badUntil keeps an address that just failed out of rotation briefly.
	badUntil map[string]time.Time
}

// newCoordClient makes a client of the coordinators discover returns. With
// tlsStore it speaks mutual TLS: it shows the agent's certificate and
// accepts only coordinators holding a server certificate of the cluster.
func newCoordClient(discover func() []string, tlsStore *tlsutil.Store, log *slog.Logger) *coordClient {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	scheme := "http://"
	if tlsStore != nil {
		tr.TLSClientConfig = tlsStore.ClientConfig(tlsutil.RoleServer)
		tr.ForceAttemptHTTP2 = true
		scheme = "https://"
	}
	return &coordClient{
		scheme:   scheme,
		discover: discover,
		http:     &http.Client{Transport: tr},
		log:      log,
		retryMin: 100 * time.Millisecond,
		retryMax: 2 * time.Second,
		clients:  make(map[string]vbatchv1connect.AgentServiceClient),
		badUntil: make(map[string]time.Time),
	}
}

// pick returns the coordinator to call: the current one while it works,
// else a random known one that has not failed lately.
func (c *coordClient) pick() (string, vbatchv1connect.AgentServiceClient, error) {
	addrs := c.discover()
	if len(addrs) == 0 {
		return "", nil, errNoCoordinators
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current == "" || !slices.Contains(addrs, c.current) {
		now := time.Now()
		var good []string
		for _, a := range addrs {
			if now.After(c.badUntil[a]) {
				good = append(good, a)
			}
		}
		if len(good) == 0 {
			good = addrs
		}
		c.current = good[rand.IntN(len(good))]
	}
	cl, ok := c.clients[c.current]
	if !ok {
		base := c.current
		if !strings.Contains(base, "://") {
			base = c.scheme + base
		}
		// Coordinators never compress answers; asking would only cost
		// a header.
		cl = vbatchv1connect.NewAgentServiceClient(c.http, base, connect.WithAcceptCompression("gzip", nil, nil))
		c.clients[c.current] = cl
	}
	return c.current, cl, nil
}

// markBad takes addr out of rotation for a few seconds.
func (c *coordClient) markBad(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.badUntil[addr] = time.Now().Add(5 * time.Second)
	if c.current == addr {
		c.current = ""
	}
}

// retryable reports whether err means "try another coordinator": the
// coordinator is unreachable, has no leader for now, or did not answer in
// time.
func retryable(err error) bool {
	if errors.Is(err, errNoCoordinators) {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeResourceExhausted:
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// call runs fn against a coordinator, moving to another on retryable
// errors until ctx ends. attempt, if positive, bounds each attempt. op
// names the call in errors.
func (c *coordClient) call(ctx context.Context, op string, attempt time.Duration, fn func(context.Context, vbatchv1connect.AgentServiceClient) error) error {
	wait := c.retryMin
	for {
		addr, cl, err := c.pick()
		if err == nil {
			actx, cancel := ctx, context.CancelFunc(func() {})
			if attempt > 0 {
				actx, cancel = context.WithTimeout(ctx, attempt)
			}
			err = fn(actx, cl)
			cancel()
			if err == nil {
				return nil
			}
			if ctx.Err() == nil && retryable(err) {
				c.log.Debug("coordinator call failed, trying another", "op", op, "coordinator", addr, "err", err)
				c.markBad(addr)
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (last error: %v)", op, ctx.Err(), err)
		}
		if !retryable(err) {
			return fmt.Errorf("%s on %s: %w", op, addr, err)
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %v)", op, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(wait*2, c.retryMax)
	}
}
