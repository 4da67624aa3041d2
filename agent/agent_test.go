package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/dirlock"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// inputLines makes n batch input lines; the body carries the line number
// so the fake engine can pick its behaviour per line.
func inputLines(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"test-model","line":%d}}`, i, i)
	}
	return out
}

type harness struct {
	a     *Agent
	coord *fakeCoord
	eng   *fakeEngine
	stop  func() error
}

// startAgent runs an agent against coord and eng with fast test timings.
// The agent is stopped when the test ends (or earlier through h.stop).
func startAgent(t *testing.T, coord *fakeCoord, eng *fakeEngine, mutate func(*Config)) *harness {
	t.Helper()
	cfg := testConfig(t, coord, "agent-test")
	cfg.Concurrency = 8
	cfg.PartLines = 100
	cfg.PartInterval = 20 * time.Millisecond
	cfg.RetryBackoff = time.Millisecond
	cfg.RetryBackoffMax = 4 * time.Millisecond
	cfg.TelemetryInterval = 50 * time.Millisecond
	cfg.DrainTimeout = 5 * time.Second
	cfg.ShutdownTimeout = 10 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a := New(cfg, eng, fakeGPUs{}, logger)
	stop := runAgent(t, a)
	return &harness{a: a, coord: coord, eng: eng, stop: stop}
}

// testConfig is an agent config for tests: node id, a temporary data dir,
// an OS-chosen address, coord (served now) as its only coordinator, and a
// short lease poll.
func testConfig(t *testing.T, coord *fakeCoord, id string) Config {
	t.Helper()
	addr := coord.serve(t)
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = t.TempDir()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.Coordinators = func() []string { return []string{addr} }
	cfg.LeaseWait = 100 * time.Millisecond
	return cfg
}

// runAgent runs a until the test ends or stop is called; stop returns
// Run's error.
func runAgent(t *testing.T, a *Agent) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("Run did not return")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent run: %v", err)
		}
	})
	return stop
}

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counter reads a counter's value.
func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func (h *harness) chunkOutcome(t *testing.T, status string) float64 {
	return counter(t, h.a.metrics.ChunksProcessed.WithLabelValues(status))
}

// decodedLine is an output or error line as a test reads it.
type decodedLine struct {
	ID       string `json:"id"`
	CustomID string `json:"custom_id"`
	Response *struct {
		StatusCode int             `json:"status_code"`
		RequestID  string          `json:"request_id"`
		Body       json.RawMessage `json:"body"`
	} `json:"response"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// committedLines decodes every committed output and error line by
// custom_id, failing on duplicates, and checks parts are contiguous from 0.
func committedLines(t *testing.T, f *fakeCoord) (outputs, errs map[string]decodedLine) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	outputs, errs = map[string]decodedLine{}, map[string]decodedLine{}
	var next int64
	for _, p := range f.parts {
		if p.FromLine != next {
			t.Fatalf("part [%d,%d) does not start at %d", p.FromLine, p.ToLine, next)
		}
		next = p.ToLine
		for file, data := range map[string][]byte{"output": p.Output, "errors": p.Errors} {
			for _, raw := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
				if raw == "" {
					continue
				}
				var l decodedLine
				if err := json.Unmarshal([]byte(raw), &l); err != nil {
					t.Fatalf("%s line %q: %v", file, raw, err)
				}
				if _, dup := outputs[l.CustomID]; dup {
					t.Fatalf("%s committed twice", l.CustomID)
				}
				if _, dup := errs[l.CustomID]; dup {
					t.Fatalf("%s committed twice", l.CustomID)
				}
				if file == "output" {
					outputs[l.CustomID] = l
				} else {
					errs[l.CustomID] = l
				}
			}
		}
	}
	if next != f.progress {
		t.Fatalf("parts end at %d, progress %d", next, f.progress)
	}
	return outputs, errs
}

func noViolations(t *testing.T, f *fakeCoord) {
	t.Helper()
	f.with(func() {
		for _, v := range f.violations {
			t.Errorf("protocol violation: %s", v)
		}
	})
}

func TestChunkProcessedExactlyOnce(t *testing.T) {
	const n = 250
	coord := newFakeCoord(t, inputLines(n))
	eng := newFakeEngine()
	eng.do = func(ctx context.Context, line int) (int, []byte, error) {
		switch {
		case line%50 == 7:
			return 400, []byte(`{"error":{"message":"bad request","type":"invalid_request_error"}}`), nil
		case line == 13:
			return 503, []byte("upstream down"), nil
		case line == 21:
			return 0, nil, errors.New("dial tcp 127.0.0.1:1: connection refused")
		}
		return 200, okBody(line), nil
	}
	h := startAgent(t, coord, eng, nil)
	waitFor(t, "chunk completed", func() bool { var s string; coord.with(func() { s = coord.state }); return s == "done" })
	noViolations(t, coord)
	outputs, errs := committedLines(t, coord)
	if len(outputs)+len(errs) != n {
		t.Fatalf("%d output + %d error lines, want %d", len(outputs), len(errs), n)
	}
	wantErrs := map[string]bool{"req-13": true, "req-21": true}
	for i := 7; i < n; i += 50 {
		wantErrs[fmt.Sprintf("req-%d", i)] = true
	}
	for id := range wantErrs {
		if _, ok := errs[id]; !ok {
			t.Errorf("%s not in the error file", id)
		}
	}
	if len(errs) != len(wantErrs) {
		t.Errorf("%d error lines, want %d", len(errs), len(wantErrs))
	}
	for id, l := range outputs {
		if l.Response == nil || l.Response.StatusCode != 200 || l.Error != nil || !strings.HasPrefix(l.ID, "batch_req_") {
			t.Fatalf("%s: bad output line %+v", id, l)
		}
		var i int
		fmt.Sscanf(id, "req-%d", &i)
		if string(l.Response.Body) != string(okBody(i)) {
			t.Fatalf("%s: body %s", id, l.Response.Body)
		}
	}
	if l := errs["req-7"]; l.Response == nil || l.Response.StatusCode != 400 || !strings.HasPrefix(string(l.Response.Body), `{"error"`) {
		t.Errorf("4xx line: %+v", l)
	}
	if l := errs["req-13"]; l.Response == nil || l.Response.StatusCode != 503 || string(l.Response.Body) != `"upstream down"` {
		t.Errorf("5xx line: %+v", l)
	}
	if l := errs["req-21"]; l.Response != nil || l.Error == nil || l.Error.Code != errCodeEngineUnavailable {
		t.Errorf("connection error line: %+v", l)
	}
	for line, want := range map[int]int{7: 1, 13: 4, 21: 4, 0: 1, 249: 1} {
		if got := eng.attemptsOf(line); got != want {
			t.Errorf("line %d: %d engine attempts, want %d", line, got, want)
		}
	}
	var usage vbatchv1.Usage
	var succeeded int64
	coord.with(func() {
		for _, p := range coord.parts {
			fsm.AddUsage(&usage, p.Usage)
			succeeded += p.Succeeded
		}
		// This fake predates completing with the last part, so the
		// agent falls back to Complete.
		if coord.completes != 1 || len(coord.releases) != 0 {
			t.Errorf("completes %d, releases %v", coord.completes, coord.releases)
		}
	})
	if succeeded != int64(len(outputs)) || usage.InputTokens != 3*succeeded || usage.OutputTokens != 5*succeeded || usage.TotalTokens != 8*succeeded {
		t.Errorf("usage %+v for %d succeeded lines", &usage, succeeded)
	}
	waitFor(t, "completed metric", func() bool { return h.chunkOutcome(t, chunkCompleted) == 1 })
	if got := counter(t, h.a.metrics.TokensGenerated); got != float64(5*succeeded) {
		t.Errorf("tokens generated %v, want %d", got, 5*succeeded)
	}
}

func TestReRegistersWhenForgotten(t *testing.T) {
	coord := newFakeCoord(t, nil)
	startAgent(t, coord, newFakeEngine(), nil)
	waitFor(t, "registration", func() bool { var n int; coord.with(func() { n = coord.registers }); return n == 1 })
	coord.with(func() { delete(coord.registered, "agent-test") })
	waitFor(t, "second registration", func() bool { var n int; coord.with(func() { n = coord.registers }); return n >= 2 })
	// Both lease workers heard "not registered"; one registration serves both.
	coord.with(func() {
		if coord.registers != 2 {
			t.Errorf("%d registrations, want 2", coord.registers)
		}
	})
}

func TestFindsCoordinatorsOverGossip(t *testing.T) {
	coord := newFakeCoord(t, inputLines(10))
	rpcAddr := coord.serve(t)
	pool, err := gossip.Start(gossip.Config{
		Name:          "coord-1",
		BindAddr:      "127.0.0.1:0",
		Meta:          gossip.Meta{Role: gossip.RoleCoordinator, RPCAddr: rpcAddr},
		ProbeInterval: 100 * time.Millisecond,
		// Agents label their gossip with the cluster name.
		Label: DefaultConfig().ClusterName,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Leave(time.Second)

	cfg := DefaultConfig()
	cfg.NodeID = "agent-gossip"
	cfg.DataDir = t.TempDir()
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.Join = []string{pool.Addr()}
	cfg.LeaseWait = 100 * time.Millisecond
	cfg.PartInterval = 20 * time.Millisecond
	runAgent(t, New(cfg, newFakeEngine(), nil, nil))
	waitFor(t, "chunk completed", func() bool { var s string; coord.with(func() { s = coord.state }); return s == "done" })
	m, ok := pool.Member("agent-gossip")
	if !ok || m.Meta.Role != gossip.RoleAgent || m.Meta.RPCAddr == "" || len(m.Meta.Models) != 1 {
		t.Errorf("agent gossip member %+v (found %v)", m, ok)
	}
}

// TestNoLeaseBeforeAttached: lease workers wait for the coordinator to
// answer the Attach stream, so no lease is held by an agent whose death
// only gossip could notice.
func TestNoLeaseBeforeAttached(t *testing.T) {
	coord := newFakeCoord(t, nil)
	gate := make(chan struct{})
	coord.attachGate = gate
	startAgent(t, coord, newFakeEngine(), nil)
	waitFor(t, "an attach stream", func() bool {
		var n int
		coord.with(func() { n = len(coord.attached) })
		return n > 0
	})
	time.Sleep(300 * time.Millisecond) // the window a lease would have to slip in
	var leases int
	coord.with(func() { leases = coord.leases })
	if leases != 0 {
		t.Fatalf("%d lease calls before the coordinator answered Attach", leases)
	}
	close(gate)
	waitFor(t, "a lease call once attached", func() bool {
		coord.with(func() { leases = coord.leases })
		return leases > 0
	})
}

func TestAttachesWhileRunning(t *testing.T) {
	coord := newFakeCoord(t, nil)
	startAgent(t, coord, newFakeEngine(), nil)
	waitFor(t, "an attach stream", func() bool {
		var ids []string
		coord.with(func() { ids = coord.attached })
		return len(ids) > 0 && ids[0] == "agent-test"
	})
}

// TestSecondAgentOnTheSameDataDirRefused: an agent does not start on a data
// dir another agent holds (their vLLM processes would carry the same mark
// and each would kill the other's as leftovers).
func TestSecondAgentOnTheSameDataDirRefused(t *testing.T) {
	coord := newFakeCoord(t, nil)
	h := startAgent(t, coord, newFakeEngine(), nil)
	waitFor(t, "the first agent registered", func() bool { var n int; coord.with(func() { n = coord.registers }); return n > 0 })
	cfg := h.a.cfg
	cfg.NodeID = "agent-two"
	err := New(cfg, newFakeEngine(), fakeGPUs{}, nil).Run(context.Background())
	if !errors.Is(err, dirlock.ErrLocked) {
		t.Fatalf("second agent on %s: %v, want ErrLocked", cfg.DataDir, err)
	}
}
