package agent

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/agent/gpu"
	"github.com/vbatch/vbatch/sim"
)

// TestWithSimulatorEngine runs a chunk through the real simulator engine
// and simulated GPUs: the agent core against the packages it ships with.
func TestWithSimulatorEngine(t *testing.T) {
	const n = 120
	lines := make([][]byte, n)
	for i := range lines {
		lines[i] = fmt.Appendf(nil, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"hello %d"}],"max_tokens":8}}`, i, fakeModel, i)
	}
	coord := newFakeCoord(t, lines)
	eng := engine.NewSim(sim.Config{Models: []string{fakeModel}})
	gpus := gpu.NewSimulated(2, 1)
	addr := coord.serve(t)
	cfg := DefaultConfig()
	cfg.NodeID = "agent-sim"
	cfg.DataDir = t.TempDir()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.Coordinators = func() []string { return []string{addr} }
	cfg.LeaseWait = 100 * time.Millisecond
	cfg.TelemetryInterval = 50 * time.Millisecond
	h := runAgent(t, New(cfg, eng, gpus, nil))

	waitFor(t, "chunk completed", func() bool { var s string; coord.with(func() { s = coord.state }); return s == "done" })
	noViolations(t, coord)
	outputs, errs := committedLines(t, coord)
	if len(outputs) != n || len(errs) != 0 {
		t.Fatalf("%d outputs, %d errors, want %d outputs", len(outputs), len(errs), n)
	}
	for id, l := range outputs {
		if l.Response == nil || l.Response.StatusCode != 200 || !strings.Contains(string(l.Response.Body), `"chat.completion"`) {
			t.Fatalf("%s: %+v", id, l)
		}
	}
	coord.with(func() {
		var in, out int64
		for _, p := range coord.parts {
			in += p.Usage.InputTokens
			out += p.Usage.OutputTokens
		}
		if in == 0 || out == 0 {
			t.Errorf("usage: %d input, %d output tokens", in, out)
		}
	})
	waitFor(t, "telemetry with engine stats", func() bool {
		ok := false
		coord.with(func() {
			for _, r := range coord.telemetry {
				if len(r.Gpus) == 2 && r.Gpus[0].Simulated && len(r.Engines) == 1 && r.Engines[0].Model == fakeModel && r.Engines[0].Loaded {
					ok = true
				}
			}
		})
		return ok
	})
	var base string
	coord.with(func() { base = "http://" + coord.registered["agent-sim"].RpcAddr })
	if code, body := get(t, base+"/metrics/engine"); code != http.StatusOK || !strings.Contains(body, "vllm:") {
		t.Errorf("engine metrics: %d %.200s", code, body)
	}
	// The agent's own /metrics relays the engine's vllm:* series with an
	// agent label, beside the agent's figures.
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `agent="agent-sim"`) ||
		!strings.Contains(body, "vllm:num_requests_running") || !strings.Contains(body, "vbatch_agent_requests_total") {
		t.Errorf("agent metrics without the relayed engine series: %d %.400s", code, body)
	}
	if err := h(); err != nil {
		t.Fatal(err)
	}
	if eng.Healthy() {
		t.Error("engine still healthy after the agent stopped")
	}
}
