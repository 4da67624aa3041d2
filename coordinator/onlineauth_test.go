package coordinator

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// countingServer answers every request with 200 and {"agent":name}, and
// counts them.
func countingServer(t *testing.T, name string) (addr string, hits *atomic.Int64) {
	t.Helper()
	hits = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"agent":"`+name+`"}`)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), hits
}

// gossipAgent joins leader's gossip pool as an agent named name that
// announces models at addr, and waits until the leader lists it.
func gossipAgent(t *testing.T, leader *Coordinator, name, addr string, models []string) {
	t.Helper()
	pool, err := gossip.Start(gossip.Config{
		Name: name, BindAddr: "127.0.0.1:0", Label: leader.cfg.ClusterName,
		Meta: gossip.Meta{Role: gossip.RoleAgent, RPCAddr: addr, Models: models},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pool.Leave(time.Second) })
	if _, err := pool.Join([]string{leader.pool.Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gossip listing "+name, func() bool { _, ok := leader.pool.Member(name); return ok })
}

// TestOnlineRoutesOnlyToRegisteredAgents: gossip tells which registered
// agents are alive, not which agents exist. A member that only announces
// itself as an agent (anyone holding the gossip key can) gets no online
// request and adds nothing to /v1/models; a registered agent is offered
// only the models it registered, at the address it registered.
func TestOnlineRoutesOnlyToRegisteredAgents(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	r := newRouter(leader)
	register := func(a *vbatchv1.Agent) {
		t.Helper()
		if _, err := leader.agents.Register(context.Background(), connect.NewRequest(&vbatchv1.RegisterRequest{Agent: a})); err != nil {
			t.Fatal(err)
		}
	}

	// "a-ghost" sorts first: with equal loads, it would be picked first.
	ghostAddr, ghostHits := countingServer(t, "a-ghost")
	gossipAgent(t, leader, "a-ghost", ghostAddr, []string{"m", "ghost-model"})
	realAddr, realHits := countingServer(t, "b-real")
	register(&vbatchv1.Agent{Id: "b-real", RpcAddr: realAddr, Models: []string{"m"}})
	gossipAgent(t, leader, "b-real", realAddr, []string{"m", "unregistered-model"})
	// "c-moved" registered one address and announces another.
	movedAddr, movedHits := countingServer(t, "c-moved")
	decoyAddr, decoyHits := countingServer(t, "decoy")
	register(&vbatchv1.Agent{Id: "c-moved", RpcAddr: movedAddr, Models: []string{"n"}})
	gossipAgent(t, leader, "c-moved", decoyAddr, []string{"n"})

	var ids []string
	for _, m := range r.Models() {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []string{"m", "n"}) {
		t.Fatalf("models %v, want [m n]: only what live registered agents registered", ids)
	}
	for _, model := range []string{"ghost-model", "unregistered-model"} {
		if got, err := r.pick(model, nil); !errors.Is(err, api.ErrNoAgent) {
			t.Fatalf("pick %s: %s %v, want no agent", model, got.Name, err)
		}
	}
	for range 3 {
		if rec := online(t, r); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"agent":"b-real"`) {
			t.Fatalf("model m: %d %s, want b-real's answer", rec.Code, rec.Body)
		}
	}
	rec := httptest.NewRecorder()
	if err := r.ServeInference(rec, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"n"}`))); err != nil {
		t.Fatalf("model n: %v", err)
	}
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"agent":"c-moved"`) {
		t.Fatalf("model n: %d %s, want c-moved's answer from its registered address", rec.Code, rec.Body)
	}
	if ghostHits.Load() != 0 || decoyHits.Load() != 0 || realHits.Load() != 3 || movedHits.Load() != 1 {
		t.Fatalf("requests: ghost %d, decoy %d, b-real %d, c-moved %d; want 0 0 3 1",
			ghostHits.Load(), decoyHits.Load(), realHits.Load(), movedHits.Load())
	}
}
