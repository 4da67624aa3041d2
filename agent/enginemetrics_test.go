package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// hangingEngineMetrics serves a /metrics that answers only when its request
// is cancelled, like a vLLM stuck behind a long scrape. got receives each
// request as it arrives; gone is closed when one is cancelled.
func hangingEngineMetrics(t *testing.T) (url string, got chan struct{}, gone chan struct{}) {
	t.Helper()
	got, gone = make(chan struct{}, 16), make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		select {
		case <-r.Context().Done():
			select {
			case <-gone:
			default:
				close(gone)
			}
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv.URL + "/metrics", got, gone
}

// TestSlowEngineMetricsKeepAgentScrape: an engine whose /metrics hangs
// costs its own series, not the agent's scrape, which answers within
// Prometheus's 5 s scrape_timeout with the agent's own metrics.
func TestSlowEngineMetricsKeepAgentScrape(t *testing.T) {
	url, _, _ := hangingEngineMetrics(t)
	coord := newFakeCoord(t, inputLines(1))
	eng := newFakeEngine()
	eng.metrics = url
	startAgent(t, coord, eng, nil)
	var base string
	waitFor(t, "the agent to register", func() bool {
		coord.with(func() {
			if a := coord.registered["agent-test"]; a != nil {
				base = "http://" + a.RpcAddr
			}
		})
		return base != ""
	})
	// Prometheus's scrape_timeout is 5 s; leave it a margin.
	client := &http.Client{Timeout: 4 * time.Second}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape with a hanging engine: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "vbatch_agent_leases_held") {
		t.Fatalf("/metrics with a hanging engine: %d %.200s", resp.StatusCode, body)
	}
}

// TestEngineMetricsFollowScrapeContext: the engine fetch ends with the
// scrape's context, and with its own bound, and says at debug why the
// engine's metrics were left out; a prompt engine's metrics are relayed.
func TestEngineMetricsFollowScrapeContext(t *testing.T) {
	url, got, gone := hangingEngineMetrics(t)
	logs := &lockedBuffer{}
	g := &engineGatherer{url: func() string { return url }, agentID: "a1", client: &http.Client{}, timeout: time.Minute,
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}

	// The scrape is cancelled: the fetch ends with it.
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() { fams, err := g.gather(ctx); done <- result{len(fams), err} }()
	<-got
	cancel()
	select {
	case r := <-done:
		if r.n != 0 || r.err != nil {
			t.Fatalf("gather after cancel: %d families, %v", r.n, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gather still waits on the engine after the scrape was cancelled")
	}
	<-gone
	if !strings.Contains(logs.String(), "scrape cancelled") {
		t.Errorf("no debug line for the cancelled scrape: %s", logs.String())
	}

	// The fetch's own bound.
	g.timeout = 50 * time.Millisecond
	if fams, err := g.gather(context.Background()); len(fams) != 0 || err != nil {
		t.Fatalf("gather of a hanging engine: %d families, %v", len(fams), err)
	}
	if !strings.Contains(logs.String(), "engine metrics took over 50ms") {
		t.Errorf("no debug line for the timeout: %s", logs.String())
	}

	// A prompt engine's metrics are relayed, labelled with the agent.
	fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "vllm:num_requests_running 3\n")
	}))
	defer fast.Close()
	g.url = func() string { return fast.URL + "/metrics" }
	reg := newMetrics().registry
	srv := httptest.NewServer(g.handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `vllm:num_requests_running{agent="a1"} 3`) || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("/metrics with a prompt engine: %.400s", body)
	}
}
