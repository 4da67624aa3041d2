package coordinator

import (
	"context"
	"io"
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
// endpoint answers with status, and counts the requests it gets.
func fakeOnlineAgent(t *testing.T, leader *Coordinator, name string, status int) *atomic.Int64 {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"agent":"`+name+`"}`)
	}))
	t.Cleanup(srv.Close)
	pool, err := gossip.Start(gossip.Config{
		Name: name, BindAddr: "127.0.0.1:0", Label: leader.cfg.ClusterName,
		Meta: gossip.Meta{Role: gossip.RoleAgent, RPCAddr: strings.TrimPrefix(srv.URL, "http://"), Models: []string{"m"}},
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
	return &hits
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
