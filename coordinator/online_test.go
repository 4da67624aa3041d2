package coordinator

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// fakeOnlineAgent joins gossip as an agent serving model "m" whose online
// endpoint answers with status, and counts the requests it gets. A 503 is
// marked as a request the engine never got, as agents answer one.
func fakeOnlineAgent(t *testing.T, leader *Coordinator, name string, status int) *atomic.Int64 {
	t.Helper()
	return fakeOnlineAgentFunc(t, leader, name, func(w http.ResponseWriter, r *http.Request) {
		if status == http.StatusServiceUnavailable {
			w.Header().Set(agentNotSentHeader, "1")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"agent":"`+name+`"}`)
	})
}

// fakeOnlineAgentFunc joins gossip as an agent serving model "m" whose
// online endpoint is h, and counts the requests it gets.
func fakeOnlineAgentFunc(t *testing.T, leader *Coordinator, name string, h http.HandlerFunc) *atomic.Int64 {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	joinFakeAgent(t, leader, name, strings.TrimPrefix(srv.URL, "http://"))
	return &hits
}

// joinFakeAgent registers name as an agent serving model "m" at addr and
// joins it to gossip with the pool it returns.
func joinFakeAgent(t *testing.T, leader *Coordinator, name, addr string) *gossip.Pool {
	t.Helper()
	pool, err := gossip.Start(gossip.Config{
		Name: name, BindAddr: "127.0.0.1:0", Label: leader.cfg.ClusterName,
		Meta: gossip.Meta{Role: gossip.RoleAgent, RPCAddr: addr, Models: []string{"m"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Leave(time.Second) })
	if _, err := pool.Join([]string{leader.pool.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.agents.Register(context.Background(), connect.NewRequest(&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: name, Models: []string{"m"}}})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gossip listing "+name, func() bool { _, ok := leader.pool.Member(name); return ok })
	return pool
}

// online sends one online request through the router.
func online(t *testing.T, r *router) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[]}`))
	if err := r.ServeInference(rec, req); err != nil {
		t.Fatalf("ServeInference: %v", err)
	}
	return rec
}

// TestOnlineRoutingLeavesFailingAgents: an agent whose engine is down
// (503) is left for the next one, an agent that cannot be reached too, and
// a draining agent or one reporting no loaded engine gets nothing.
func TestOnlineRoutingLeavesFailingAgents(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	r := newRouter(leader)
	// "a" sorts first, so with equal loads it is picked first.
	a := fakeOnlineAgent(t, leader, "a", http.StatusServiceUnavailable)
	b := fakeOnlineAgent(t, leader, "b", http.StatusOK)
	for range 3 {
		if rec := online(t, r); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"agent":"b"`) {
			t.Fatalf("with a's engine down: %d %s, want b's answer", rec.Code, rec.Body)
		}
	}
	if a.Load() == 0 {
		t.Fatal("a was never tried; the test proves nothing")
	}

	// b drains; a reports its engine down: nothing is left to try.
	if _, err := leader.Apply(context.Background(), &vbatchv1.DrainAgent{AgentId: "b"}); err != nil {
		t.Fatal(err)
	}
	leader.agents.store(&vbatchv1.TelemetryRequest{AgentId: "a", SentAtUnixMs: time.Now().UnixMilli(),
		Engines: []*vbatchv1.EngineStats{{Model: "m", Loaded: false}}}, leader.Now())
	before := a.Load() + b.Load()
	rec := httptest.NewRecorder()
	err := r.ServeInference(rec, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m"}`)))
	if err == nil || a.Load()+b.Load() != before {
		t.Fatalf("draining b and unloaded a: err %v, %d new requests to agents; want no agent", err, a.Load()+b.Load()-before)
	}
}

// TestOnlineRetriesOnlyWhatWasNotSent: another agent is tried only for a
// request that surely never reached an engine (the agent could not be
// connected to, or answered 503 marked not sent). A 502 or 504, an
// unmarked 503 (an engine's own) or a connection the agent dropped after
// taking the request may have run it: the client gets that failure, and
// no other engine runs the request again.
func TestOnlineRetriesOnlyWhatWasNotSent(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	r := newRouter(leader)

	// "a0" sorts first: picked first with equal loads. Nothing listens at
	// its address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	joinFakeAgent(t, leader, "a0", closed)
	var failWith atomic.Value
	failing := fakeOnlineAgentFunc(t, leader, "a1", func(w http.ResponseWriter, r *http.Request) {
		switch f := failWith.Load().(string); f {
		case "drop": // took the request, then died
			_, _ = io.ReadAll(r.Body)
			panic(http.ErrAbortHandler)
		case "not-sent":
			w.Header().Set(agentNotSentHeader, "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		case "502":
			w.WriteHeader(http.StatusBadGateway)
		case "503":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "504":
			w.WriteHeader(http.StatusGatewayTimeout)
		}
	})
	good := fakeOnlineAgent(t, leader, "b", http.StatusOK)

	for _, tc := range []struct {
		fail   string
		key    string // Idempotency-Key
		status int    // the client's
		good   int64
	}{
		{"not-sent", "", http.StatusOK, 1},
		{"502", "", http.StatusBadGateway, 0},
		{"503", "", http.StatusServiceUnavailable, 0},
		{"504", "", http.StatusGatewayTimeout, 0},
		// On the connection the 504 left open: with an Idempotency-Key,
		// net/http would send the POST again once the reused connection
		// drops, unless the proxy strips it.
		{"drop", "k1", http.StatusBadGateway, 0},
		{"drop", "", http.StatusBadGateway, 0},
	} {
		failWith.Store(tc.fail)
		before, goodBefore := failing.Load(), good.Load()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[]}`))
		if tc.key != "" {
			req.Header.Set("Idempotency-Key", tc.key)
		}
		if err := r.ServeInference(rec, req); err != nil {
			t.Fatalf("ServeInference: %v", err)
		}
		if rec.Code != tc.status || failing.Load() != before+1 || good.Load()-goodBefore != tc.good {
			t.Errorf("a1 failing with %s: client got %d, a1 tried %d times, b %d; want %d, a1 once, b %d",
				tc.fail, rec.Code, failing.Load()-before, good.Load()-goodBefore, tc.status, tc.good)
		}
		if rec.Header().Get(agentNotSentHeader) != "" {
			t.Errorf("a1 failing with %s: the not-sent marker reached the client", tc.fail)
		}
	}
}

// TestOnlineToGoneAgentIsCut: an online request in flight to an agent that
// gossip then declares gone (here it leaves; a frozen agent is declared
// dead the same way) is cut once the grace for a draining agent's open
// requests has passed, and answered 502, rather than hanging until the
// client gives up (the proxy's transport has no response timeout: a
// generation may take minutes).
func TestOnlineToGoneAgentIsCut(t *testing.T) {
	t.Run("gone", func(t *testing.T) { testOnlineToGoneAgentIsCut(t, false) })
	// Declared gone and back within the grace (a gossip flap): the request
	// goes on, and is still cut when the agent is gone for good later.
	t.Run("after a flap", func(t *testing.T) { testOnlineToGoneAgentIsCut(t, true) })
}

func testOnlineToGoneAgentIsCut(t *testing.T, flap bool) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	r := leader.router
	r.goneGrace = 10 * time.Millisecond
	frozen := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select { // never answers, as a stopped process
		case <-frozen:
		case <-r.Context().Done():
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { close(frozen); _ = srv.Close() })
	pool := joinFakeAgent(t, leader, "a", ln.Addr().String())

	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[]}`))
		if err := r.ServeInference(rec, req); err != nil {
			t.Errorf("ServeInference: %v", err)
		}
		done <- rec
	}()
	waitFor(t, 10*time.Second, "the request to reach the agent", func() bool { return hits.Load() == 1 })
	if flap {
		r.agentGone("a") // the leave event; the agent is back when the grace ends
		waitFor(t, 10*time.Second, "the flap's grace to end", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.scopes["a"] != nil
		})
		select {
		case rec := <-done:
			t.Fatalf("a request was cut by a flap: %d %s", rec.Code, rec.Body)
		default:
		}
	}
	if err := pool.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case rec := <-done:
		if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "agent_gone") {
			t.Fatalf("request to a gone agent: %d %s; want 502 agent_gone", rec.Code, rec.Body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request to a gone agent still hangs")
	}
}

// TestOnlineAllAgentsBusyIs503: when every agent tried answers that its
// engine did not take the request (down, or busy with a line run alone),
// the model is unavailable for now: 503 model_unavailable with
// Retry-After, not 502 agent_unreachable (kept for agents that could not
// be reached).
func TestOnlineAllAgentsBusyIs503(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	r := newRouter(leader)
	busy := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set(agentNotSentHeader, "1")
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fakeOnlineAgentFunc(t, leader, "a1", busy)
	fakeOnlineAgentFunc(t, leader, "a2", busy)
	rec := online(t, r)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "model_unavailable") || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("every agent busy: %d %s (Retry-After %q); want 503 model_unavailable with Retry-After", rec.Code, rec.Body, rec.Header().Get("Retry-After"))
	}
}
