package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// maxResponseBytes bounds the answer Do reads into memory.
const maxResponseBytes = 256 << 20

// upstream is the HTTP side shared by every engine: one OpenAI-compatible
// server at a base URL that may change (a restarted vLLM gets a new port).
type upstream struct {
	client *http.Client

	mu   sync.RWMutex
	base string // scheme://host:port, no trailing slash, no /v1
	key  string

	rateMu     sync.Mutex
	lastTokens int64
	lastAt     time.Time
}

func newUpstream(client *http.Client) *upstream {
	if client == nil {
		client = &http.Client{Transport: defaultTransport()}
	}
	return &upstream{client: client}
}

// defaultTransport is tuned for many concurrent requests to one host.
func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 1024
	return t
}

// normalizeBase turns "http://h:8000/v1/" into "http://h:8000": paths given
// to Do already start with /v1.
func normalizeBase(base string) string {
	base = strings.TrimRight(base, "/")
	return strings.TrimSuffix(base, "/v1")
}

// set points the upstream at a new server.
func (u *upstream) set(base, key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.base, u.key = normalizeBase(base), key
}

func (u *upstream) target() (string, string) {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.base, u.key
}

// newRequest builds a request to path on the current server.
func (u *upstream) newRequest(ctx context.Context, method, path string, body []byte) (*http.Request, error) {
	base, key := u.target()
	if base == "" {
		return nil, errors.New("engine not started")
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return req, nil
}

// do implements Engine.Do.
func (u *upstream) do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	req, err := u.newRequest(ctx, http.MethodPost, path, body)
	if err != nil {
		return 0, nil, err
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("post %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read answer of %s: %w", path, err)
	}
	if len(b) > maxResponseBytes {
		return 0, nil, fmt.Errorf("answer of %s exceeds %d bytes", path, maxResponseBytes)
	}
	return resp.StatusCode, b, nil
}

// proxyWriteTimeout bounds each write of a proxied answer to the client.
const proxyWriteTimeout = 30 * time.Second

// proxiedHeaders are the response headers Proxy passes on.
var proxiedHeaders = []string{"Content-Type", "Cache-Control", "X-Request-Id"}

// proxy implements Engine.Proxy.
func (u *upstream) proxy(ctx context.Context, path string, body []byte, w http.ResponseWriter) error {
	req, err := u.newRequest(ctx, http.MethodPost, path, body)
	if err != nil {
		return err
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", path, err)
	}
	defer resp.Body.Close()
	for _, h := range proxiedHeaders {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			// A client that stops reading is cut off: the request holds
			// the engine (and the agent's shared engine lock) meanwhile.
			_ = rc.SetWriteDeadline(time.Now().Add(proxyWriteTimeout))
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("proxy %s: write to client: %w", path, err)
			}
			_ = rc.Flush() // not every writer can flush; the copy still works
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("proxy %s: read from engine: %w", path, rerr)
		}
	}
}

// get fetches path with a GET and returns status and body.
func (u *upstream) get(ctx context.Context, path string, limit int64) (int, []byte, error) {
	req, err := u.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return resp.StatusCode, b, nil
}

// probe reports whether the server answers /health with 200. A server
// without /health (404 or 405, not every OpenAI-compatible server has one)
// is probed with /v1/models instead.
func (u *upstream) probe(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	status, _, err := u.get(ctx, "/health", 4096)
	if err != nil {
		return false
	}
	if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
		status, _, err = u.get(ctx, "/v1/models", 1<<20)
		return err == nil && status == http.StatusOK
	}
	return status == http.StatusOK
}

// metricsURL implements Engine.MetricsURL.
func (u *upstream) metricsURL() string {
	base, _ := u.target()
	if base == "" {
		return ""
	}
	return base + "/metrics"
}

// stats reads /metrics into a Stats and updates the token rate.
func (u *upstream) stats(ctx context.Context) (Stats, error) {
	status, b, err := u.get(ctx, "/metrics", 16<<20)
	if err != nil {
		return Stats{}, fmt.Errorf("engine metrics: %w", err)
	}
	if status != http.StatusOK {
		return Stats{}, fmt.Errorf("engine metrics: status %d", status)
	}
	st := parseVLLMMetrics(b)
	now := time.Now()
	u.rateMu.Lock()
	defer u.rateMu.Unlock()
	if !u.lastAt.IsZero() && st.TokensGeneratedTotal >= u.lastTokens {
		if dt := now.Sub(u.lastAt).Seconds(); dt > 0 {
			st.TokensPerSecond = float64(st.TokensGeneratedTotal-u.lastTokens) / dt
		}
	}
	u.lastTokens, u.lastAt = st.TokensGeneratedTotal, now
	return st, nil
}
