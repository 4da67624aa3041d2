package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vbatch/vbatch/agent/engine"
)

// breakingEngine answers online requests with the start of a stream, then
// fails as an engine dying mid-answer does.
type breakingEngine struct{ *fakeEngine }

func (e breakingEngine) Proxy(_ context.Context, _ string, _ []byte, w http.ResponseWriter) error {
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"par\"}}]}\n\n")
	w.(http.Flusher).Flush()
	return errors.New("proxy: read from engine: unexpected EOF")
}

// TestOnlineFailures: an unhealthy engine is not sent the request (503,
// for the coordinator to try another agent), and an answer the engine
// breaks off mid-stream reaches the client as a cut connection, not as a
// response that looks complete.
func TestOnlineFailures(t *testing.T) {
	coord := newFakeCoord(t, nil)
	fe := newFakeEngine()
	a := New(testConfig(t, coord, "agent-online"), breakingEngine{fe}, fakeGPUs{}, nil)
	runAgent(t, a)
	waitFor(t, "registered", func() bool { var n int; coord.with(func() { n = coord.registers }); return n > 0 })
	var base string
	coord.with(func() { base = "http://" + coord.registered["agent-online"].RpcAddr })

	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"test-model","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || rerr == nil {
		t.Fatalf("broken stream: status %d, body %q, read error %v; want the connection cut (a read error)", resp.StatusCode, b, rerr)
	}

	fe.mu.Lock()
	fe.healthy = false
	fe.mu.Unlock()
	resp, err = http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"test-model"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("engine down: %d %s, want 503 with an OpenAI error", resp.StatusCode, b)
	}
}

// proxyEngine answers online requests with proxy.
type proxyEngine struct {
	*fakeEngine
	proxy func(ctx context.Context, w http.ResponseWriter) error
}

func (e proxyEngine) Proxy(ctx context.Context, _ string, _ []byte, w http.ResponseWriter) error {
	return e.proxy(ctx, w)
}

// onlineAgent starts an agent on eng, its config changed by mutate (when
// set), and returns it with the base URL of its HTTP surface.
func onlineAgent(t *testing.T, coord *fakeCoord, eng engine.Engine, mutate func(*Config)) (*Agent, string) {
	t.Helper()
	cfg := testConfig(t, coord, "agent-online")
	if mutate != nil {
		mutate(&cfg)
	}
	a := New(cfg, eng, fakeGPUs{}, nil)
	runAgent(t, a)
	var base string
	waitFor(t, "registered", func() bool {
		coord.with(func() {
			if ag := coord.registered["agent-online"]; ag != nil {
				base = "http://" + ag.RpcAddr
			}
		})
		return base != ""
	})
	return a, base
}

// postOnline sends one online request and returns its status, the
// not-sent marker and the body.
func postOnline(t *testing.T, base string) (int, string, string) {
	t.Helper()
	// A request held where it should be answered fails the test rather
	// than hanging it.
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"test-model"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(NotSentHeader), string(b)
}

// TestOnlineStatusSaysWhetherSent: only a request that never reached the
// engine is answered 503 with the not-sent marker (the coordinator may try
// another agent); one the engine died under is 502 and one that ran out
// the agent's request timeout 504, neither marked, so the coordinator does
// not run it again on another engine.
func TestOnlineStatusSaysWhetherSent(t *testing.T) {
	// An address nothing listens on: the proxy cannot connect.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	fe := newFakeEngine()
	var mode atomic.Value
	eng := proxyEngine{fakeEngine: fe, proxy: func(ctx context.Context, w http.ResponseWriter) error {
		switch mode.Load() {
		case "dial":
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+closed+"/v1/chat/completions", nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				return errors.New("a closed port answered")
			}
			return fmt.Errorf("post /v1/chat/completions: %w", err)
		case "crash":
			fe.mu.Lock()
			fe.healthy = false
			fe.mu.Unlock()
			return errors.New("post /v1/chat/completions: read: connection reset by peer")
		default: // "hang": the engine never answers
			<-ctx.Done()
			return fmt.Errorf("post /v1/chat/completions: %w", ctx.Err())
		}
	}}
	_, base := onlineAgent(t, newFakeCoord(t, nil), eng, func(c *Config) { c.RequestTimeout = 200 * time.Millisecond })
	setHealthy := func(ok bool) { fe.mu.Lock(); fe.healthy = ok; fe.mu.Unlock() }

	for _, tc := range []struct {
		mode    string
		healthy bool
		status  int
		notSent string
		code    string
	}{
		{"dial", true, http.StatusServiceUnavailable, "1", ""},
		{"hang", false, http.StatusServiceUnavailable, "1", ""}, // unhealthy: never proxied
		{"hang", true, http.StatusGatewayTimeout, "", `"code":"timeout"`},
		{"crash", true, http.StatusBadGateway, "", `"error"`},
	} {
		mode.Store(tc.mode)
		setHealthy(tc.healthy)
		status, notSent, body := postOnline(t, base)
		if status != tc.status || notSent != tc.notSent || !strings.Contains(body, `"error"`) || !strings.Contains(body, tc.code) {
			t.Errorf("%s (healthy %v): %d, not-sent %q, %s; want %d, not-sent %q, an OpenAI error with %s",
				tc.mode, tc.healthy, status, notSent, body, tc.status, tc.notSent, tc.code)
		}
	}
}

// heldEngine holds every online request on the engine until release is
// closed (or the request's context ends); entered gets one value per
// request that reached it.
func heldEngine(fe *fakeEngine) (eng proxyEngine, entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 16), make(chan struct{})
	eng = proxyEngine{fakeEngine: fe, proxy: func(ctx context.Context, w http.ResponseWriter) error {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		w.Header().Set("Content-Type", "application/json")
		_, err := io.WriteString(w, `{"ok":true}`)
		return err
	}}
	return eng, entered, release
}

// exclusiveWaiting reports whether the engine lock is held alone or waited
// for alone: a shared request would have to wait.
func exclusiveWaiting(a *Agent) bool {
	if a.runner.exclusive.tryShared() {
		a.runner.exclusive.unlockShared()
		return false
	}
	return true
}

// TestOnlineDuringIsolationIsTurnedAway: while a crash-isolated batch line
// has the engine to itself, or waits for it, an online request is answered
// 503 marked not sent at once (for the coordinator to try another agent),
// not held behind it.
func TestOnlineDuringIsolationIsTurnedAway(t *testing.T) {
	eng, entered, release := heldEngine(newFakeEngine())
	a, base := onlineAgent(t, newFakeCoord(t, nil), eng, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// An isolated line holds the engine.
	if err := a.runner.exclusive.lock(ctx); err != nil {
		t.Fatal(err)
	}
	status, notSent, body := postOnline(t, base)
	a.runner.exclusive.unlock()
	if status != http.StatusServiceUnavailable || notSent != "1" {
		t.Fatalf("online beside an isolated line: %d, not-sent %q, %s; want 503 marked not sent", status, notSent, body)
	}

	// An online request holds the engine, and an isolated line waits for
	// it: the next online request is turned away, not queued behind both.
	first := make(chan int, 1)
	go func() { s, _, _ := postOnline(t, base); first <- s }()
	<-entered
	waited := make(chan error, 1)
	go func() {
		err := a.runner.exclusive.lock(ctx)
		if err == nil {
			a.runner.exclusive.unlock()
		}
		waited <- err
	}()
	waitFor(t, "the isolated line to wait", func() bool { return exclusiveWaiting(a) })
	status, notSent, body = postOnline(t, base)
	if status != http.StatusServiceUnavailable || notSent != "1" {
		t.Fatalf("online while an isolated line waits: %d, not-sent %q, %s; want 503 marked not sent", status, notSent, body)
	}
	close(release)
	if s := <-first; s != http.StatusOK {
		t.Fatalf("the online request that held the engine: %d", s)
	}
	if err := <-waited; err != nil {
		t.Fatalf("isolated line: %v", err)
	}
}

// TestOnlineFromLoopbackOnly: with OnlineFromLoopbackOnly an online
// request from a non-loopback address is refused (403, an OpenAI error
// with code "forbidden") before it reaches the engine, while /health and
// /metrics still answer it; one from loopback is served. Validate refuses
// the field when coordinators would be told a non-loopback address.
func TestOnlineFromLoopbackOnly(t *testing.T) {
	fe := newFakeEngine()
	a, base := onlineAgent(t, newFakeCoord(t, nil), fe, func(c *Config) { c.OnlineFromLoopbackOnly = true })

	for _, remote := range []string{"10.1.2.3:40000", "[2001:db8::1]:40000", "192.168.0.7:1"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(`{"model":"test-model"}`))
		req.RemoteAddr = remote
		a.Handler().ServeHTTP(rec, req)
		var e struct {
			Error struct{ Type, Code string }
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); rec.Code != http.StatusForbidden || err != nil ||
			e.Error.Type != "invalid_request_error" || e.Error.Code != "forbidden" {
			t.Errorf("online request from %s: %d %s, want 403 invalid_request_error/forbidden", remote, rec.Code, rec.Body)
		}
		for _, path := range []string{"/health", "/metrics"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.RemoteAddr = remote
			a.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Errorf("GET %s from %s: %d, want 200", path, remote, rec.Code)
			}
		}
	}
	fe.mu.Lock()
	proxied := len(fe.proxied)
	fe.mu.Unlock()
	if proxied != 0 {
		t.Errorf("refused requests reached the engine %d times", proxied)
	}

	if code, _, body := postOnline(t, base); code != http.StatusOK || !strings.Contains(body, "proxied") {
		t.Errorf("online request from loopback: %d %s, want 200 from the engine", code, body)
	}

	cfg := DefaultConfig()
	cfg.Join, cfg.OnlineFromLoopbackOnly = []string{"127.0.0.1:8003"}, true
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("loopback-only online on %s advertised as itself: %v, want a refusal", cfg.MetricsAddr, err)
	}
	cfg.AdvertiseAddr = "127.0.0.1:8010"
	if err := cfg.Validate(); err != nil {
		t.Errorf("loopback-only online advertised on loopback: %v", err)
	}
}
