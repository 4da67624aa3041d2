package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// agentWithEngineMetrics starts an agent on a fake engine whose /metrics
// serves metrics, leased a chunk of the given number of input lines.
func agentWithEngineMetrics(t *testing.T, lines int, metrics string) (*fakeCoord, *fakeEngine) {
	t.Helper()
	engineMetrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, metrics)
	}))
	t.Cleanup(engineMetrics.Close)
	coord := newFakeCoord(t, inputLines(lines))
	eng := newFakeEngine()
	eng.metrics = engineMetrics.URL + "/metrics"
	startAgent(t, coord, eng, nil)
	return coord, eng
}

func TestHTTPSurface(t *testing.T) {
	coord, eng := agentWithEngineMetrics(t, 20, "vllm:num_requests_running 3\n")
	waitFor(t, "chunk completed", func() bool { var s string; coord.with(func() { s = coord.state }); return s == "done" })

	// The agent registered its HTTP address as its rpc_addr.
	var base string
	coord.with(func() { base = "http://" + coord.registered["agent-test"].RpcAddr })

	if code, body := get(t, base+"/health"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("health: %d %s", code, body)
	}
	// The agent counts the chunk and drops its lease once Complete has
	// returned, a moment after the coordinator saw it: wait for that.
	want := []string{
		`vbatch_agent_requests_total{code="200"} 20`, "vbatch_agent_leases_held 0", "vbatch_agent_parts_committed_total",
		"vllm_tokens_generated_total 100", "vllm_inference_duration_seconds_count 20", `vllm_chunks_processed_total{status="completed"} 1`,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, base+"/metrics")
		var missing []string
		for _, name := range want {
			if code != 200 || !strings.Contains(body, name) {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q", missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, body := get(t, base+"/metrics/engine"); code != 200 || body != "vllm:num_requests_running 3\n" {
		t.Errorf("engine metrics: %d %q", code, body)
	}
	for _, p := range onlinePaths {
		resp, err := http.Post(base+p, "application/json", strings.NewReader(`{"model":"test-model"}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"proxied":"`+p+`"`) {
			t.Errorf("POST %s: %d %s", p, resp.StatusCode, b)
		}
	}
	eng.mu.Lock()
	eng.healthy = false
	eng.mu.Unlock()
	if code, _ := get(t, base+"/health"); code != http.StatusServiceUnavailable {
		t.Errorf("health with engine down: %d", code)
	}
}

// TestMetricsSurviveBrokenEngineMetrics: an engine serving metrics that do
// not parse costs its own series, not the agent's whole scrape.
func TestMetricsSurviveBrokenEngineMetrics(t *testing.T) {
	coord, _ := agentWithEngineMetrics(t, 1, "vllm:broken{{{ not exposition format\n")
	var base string
	waitFor(t, "the agent to register", func() bool {
		coord.with(func() {
			if a := coord.registered["agent-test"]; a != nil {
				base = "http://" + a.RpcAddr
			}
		})
		return base != ""
	})
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "vbatch_agent_leases_held") {
		t.Fatalf("/metrics with broken engine metrics: %d %.200s", code, body)
	}
}

func TestTelemetryReports(t *testing.T) {
	coord := newFakeCoord(t, nil)
	startAgent(t, coord, newFakeEngine(), func(c *Config) { c.TelemetryInterval = 10 * time.Millisecond })
	waitFor(t, "telemetry", func() bool { var n int; coord.with(func() { n = len(coord.telemetry) }); return n >= 2 })
	coord.with(func() {
		r := coord.telemetry[0]
		if r.AgentId != "agent-test" || len(r.Gpus) != 2 || len(r.Engines) != 1 || r.SentAtUnixMs == 0 {
			t.Errorf("telemetry %+v", r)
		}
	})
}

func TestConfig(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "join") {
		t.Errorf("default config without join: %v", err)
	}
	cfg.Join = []string{"10.0.0.1:8003"}
	if err := cfg.Validate(); err != nil {
		t.Errorf("default config with join: %v", err)
	}
	if cfg.MetricsAddr != ":8010" || cfg.GossipAddr != ":8013" || cfg.Concurrency != 64 || cfg.MaxLeases != 2 ||
		cfg.PartLines != 500 || cfg.PartInterval != 2*time.Second || cfg.LeaseWait != 10*time.Second ||
		cfg.RetryMax != 3 || cfg.RetryBackoff != 200*time.Millisecond || cfg.RetryBackoffMax != 5*time.Second {
		t.Errorf("defaults: %+v", cfg)
	}
	bad := cfg
	bad.Concurrency, bad.PartInterval = 0, 0
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "concurrency") || !strings.Contains(err.Error(), "part interval") {
		t.Errorf("bad config: %v", err)
	}

	dir := t.TempDir()
	c := Config{DataDir: filepath.Join(dir, "agent")}
	id, err := c.nodeID()
	if err != nil || !strings.HasPrefix(id, "agent-") {
		t.Fatalf("node id %q: %v", id, err)
	}
	again, err := c.nodeID()
	if err != nil || again != id {
		t.Errorf("node id not stable: %q then %q (%v)", id, again, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "agent", "node-id")); strings.TrimSpace(string(b)) != id {
		t.Errorf("node-id file holds %q", b)
	}
}
