package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vbatch/vbatch/sim"
)

const chatReq = `{"model":"%s","messages":[{"role":"user","content":"hello there"}],"max_tokens":5}`

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitFor polls cond until it holds or 20 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOpenAIAgainstSim(t *testing.T) {
	s := sim.New(sim.Config{Models: []string{"m1", "m2"}, APIKey: "secret"})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	ctx := context.Background()

	e := NewOpenAI(srv.URL+"/v1/", "secret", nil, nil)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(ctx)
	if got := strings.Join(e.Models(), ","); got != "m1,m2" || !e.Healthy() {
		t.Fatalf("models %q healthy %v after Start", got, e.Healthy())
	}
	status, body, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "m2"))
	if err != nil || status != 200 || !strings.Contains(string(body), `"completion_tokens":5`) {
		t.Fatalf("Do: %d %s %v", status, body, err)
	}
	st, err := e.Stats(ctx)
	if err != nil || st.TokensGeneratedTotal != 5 || st.Model != "m1" || !st.Loaded || st.TokensPerSecond != 0 {
		t.Fatalf("Stats: %+v %v", st, err)
	}
	rec := httptest.NewRecorder()
	streamReq := `{"model":"m1","prompt":"x","max_tokens":3,"stream":true}`
	if err := e.Proxy(ctx, "/v1/completions", []byte(streamReq), rec); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/event-stream" || strings.Count(rec.Body.String(), "data: ") != 5 || !rec.Flushed {
		t.Fatalf("Proxy: %d %q flushed=%v %s", rec.Code, rec.Header().Get("Content-Type"), rec.Flushed, rec.Body)
	}
	st, err = e.Stats(ctx)
	if err != nil || st.TokensGeneratedTotal != 8 || st.TokensPerSecond <= 0 {
		t.Fatalf("second Stats: %+v %v", st, err)
	}
	if e.MetricsURL() != srv.URL+"/metrics" {
		t.Fatalf("MetricsURL %q", e.MetricsURL())
	}

	// An HTTP error is an answer, not an err.
	status, body, err = e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "nope"))
	if err != nil || status != 404 {
		t.Fatalf("unknown model: %d %s %v", status, body, err)
	}
	wrong := NewOpenAI(srv.URL, "wrong", []string{"m1"}, nil)
	if status, _, err := wrong.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "m1")); err != nil || status != 401 {
		t.Fatalf("wrong key: %d %v", status, err)
	}

	// A server that goes away turns the engine unhealthy at the first
	// failed request.
	srv.Close()
	if _, _, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "m1")); err == nil {
		t.Fatal("Do against a closed server succeeded")
	}
	if e.Healthy() {
		t.Fatal("still healthy after the server went away")
	}
	if _, err := e.Stats(ctx); err == nil {
		t.Fatal("Stats against a closed server succeeded")
	}
}

func TestOpenAIStartNeedsModels(t *testing.T) {
	e := NewOpenAI("http://127.0.0.1:1", "", nil, nil)
	if err := e.Start(context.Background()); err == nil {
		t.Fatal("Start without models and no server succeeded")
	}
	// With models given, a server that is down is reported, not fatal.
	e = NewOpenAI("http://127.0.0.1:1", "", []string{"m"}, nil)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(context.Background())
	if e.Healthy() {
		t.Fatal("healthy with no server")
	}
}

func TestSimEngine(t *testing.T) {
	ctx := context.Background()
	e := NewSim(sim.Config{CrashAfter: 3, APIKey: "k"})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(ctx)
	if !e.Healthy() || e.Models()[0] != sim.DefaultModel {
		t.Fatalf("healthy %v models %v", e.Healthy(), e.Models())
	}
	for i := range 2 {
		status, body, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, sim.DefaultModel))
		if err != nil || status != 200 {
			t.Fatalf("request %d: %d %s %v", i, status, body, err)
		}
	}
	if got := e.Server().Served(); got != 2 {
		t.Fatalf("Served() = %d", got)
	}
	st, err := e.Stats(ctx)
	if err != nil || st.TokensGeneratedTotal != 10 || !st.Loaded || st.Model != sim.DefaultModel {
		t.Fatalf("Stats: %+v %v", st, err)
	}
	resp, err := http.Get(e.MetricsURL())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics without key: %v %v", resp, err)
	}
	resp.Body.Close()
	// The third request crashes the embedded server, not the process.
	if status, _, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, sim.DefaultModel)); err != nil || status != 200 {
		t.Fatalf("third request: %d %v", status, err)
	}
	waitFor(t, "crash to take the engine down", func() bool { return !e.Healthy() })
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatalf("restart after crash: %v", err)
	}
	if !e.Healthy() || e.Server().Served() != 0 {
		t.Fatal("restarted engine is not fresh and healthy")
	}
}

func TestParseVLLMMetrics(t *testing.T) {
	b, err := os.ReadFile("testdata/vllm_metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	got := parseVLLMMetrics(b)
	want := Stats{RequestsRunning: 12, RequestsWaiting: 5, TokensGeneratedTotal: 1235000}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestServedModelNames(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "org/model"},
		{[]string{"--served-model-name", "a", "b", "--max-num-seqs", "8"}, "a,b"},
		{[]string{"--tensor-parallel-size", "2", "--served-model-name=c"}, "c"},
		{[]string{"--served-model-name"}, "org/model"},
	}
	for _, c := range cases {
		if got := strings.Join(servedModelNames("org/model", c.args), ","); got != c.want {
			t.Errorf("%v: got %q, want %q", c.args, got, c.want)
		}
	}
}

func TestNormalizeBase(t *testing.T) {
	for in, want := range map[string]string{
		"http://h:8000":      "http://h:8000",
		"http://h:8000/":     "http://h:8000",
		"http://h:8000/v1":   "http://h:8000",
		"http://h:8000/v1/":  "http://h:8000",
		"http://h/proxy/v1/": "http://h/proxy",
	} {
		if got := normalizeBase(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestStatsBody(t *testing.T) {
	// The upstream's token rate survives a counter reset (a restarted
	// engine) without going negative.
	var total int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "vllm:generation_tokens_total{model_name=\"m\"} %d\n", total)
	}))
	defer srv.Close()
	u := newUpstream(nil)
	u.set(srv.URL, "")
	for _, c := range []struct {
		total    int
		positive bool
	}{{100, false}, {300, true}, {10, false}} {
		total = c.total
		st, err := u.stats(context.Background())
		if err != nil || (st.TokensPerSecond > 0) != c.positive || st.TokensPerSecond < 0 {
			t.Fatalf("total %d: %+v %v", c.total, st, err)
		}
	}
}

// TestOpenAIProbesOnceForManyFailures: requests that fail together (the
// server went down under them) share one health probe and all see its
// answer.
func TestOpenAIProbesOnceForManyFailures(t *testing.T) {
	var probes atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			probes.Add(1)
			<-release
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
			c.Close() // the server died under the request
		}
	}))
	defer srv.Close()
	e := NewOpenAI(srv.URL, "", []string{"m"}, nil)
	e.healthy.Store(true)
	const n = 32
	var wg sync.WaitGroup
	var sawHealthy atomic.Int32
	for range n {
		wg.Go(func() {
			if _, _, err := e.Do(context.Background(), "/v1/chat/completions", []byte(`{}`)); err == nil {
				t.Error("Do against a dying server succeeded")
			}
			if e.Healthy() {
				sawHealthy.Add(1)
			}
		})
	}
	waitFor(t, "one probe with every other failed request waiting", func() bool {
		return probes.Load() == 1 && e.probe.waiters.Load() == n-1
	})
	close(release)
	wg.Wait()
	if p := probes.Load(); p != 1 {
		t.Fatalf("%d probes for %d failures at once, want 1", p, n)
	}
	if sawHealthy.Load() != 0 {
		t.Fatalf("%d failed requests still saw the server healthy", sawHealthy.Load())
	}
}
