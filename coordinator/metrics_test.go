package coordinator

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// scrape fetches and parses a coordinator's /metrics.
func scrape(t *testing.T, c *Coordinator) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + c.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", c.cfg.NodeID, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics of %s: %v", c.cfg.NodeID, err)
	}
	return mfs
}

// value returns the value of the series of family name whose labels
// include want, and whether there is one.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsShowTheClusterOnEveryCoordinator(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader := waitLeader(t, nodes)
	agent := &vbatchv1.Agent{Id: "agent-1", RpcAddr: "127.0.0.1:1", Models: []string{"m"}}
	if _, err := leader.Apply(ctx, &vbatchv1.RegisterAgent{Agent: agent}); err != nil {
		t.Fatalf("register agent: %v", err)
	}
	// agent-2 is in gossip (alive), agent-1 is not (dead).
	joinFakeAgent(t, leader, "agent-2", "127.0.0.1:1")
	// Telemetry reaches one coordinator; the live agent's figures show
	// there, the dead one's do not.
	f := follower(nodes)
	for _, id := range []string{"agent-1", "agent-2"} {
		tel := &vbatchv1.TelemetryRequest{AgentId: id,
			Gpus:    []*vbatchv1.GPU{{Index: 0, TemperatureCelsius: 71, MemoryTotalBytes: 1 << 30}},
			Engines: []*vbatchv1.EngineStats{{Model: "m", Loaded: true, TokensPerSecond: 99}}}
		if _, err := f.agents.Telemetry(ctx, connect.NewRequest(tel)); err != nil {
			t.Fatalf("telemetry: %v", err)
		}
	}
	resp, err := http.Get("http://" + f.HTTPAddr() + "/v1/files")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	deadline := time.Now().Add(10 * time.Second)
	for {
		leaders, ok := 0.0, true
		for _, c := range nodes {
			mfs := scrape(t, c)
			l, _ := value(mfs, "vbatch_raft_leader", nil)
			leaders += l
			peers, _ := value(mfs, "vbatch_raft_peers", nil)
			alive, _ := value(mfs, "vbatch_raft_peers_alive", nil)
			// The agent is registered but not in gossip: dead, on every node.
			dead, _ := value(mfs, "vllm_worker_status", map[string]string{"agent": "agent-1", "status": "dead"})
			live, _ := value(mfs, "vllm_worker_status", map[string]string{"agent": "agent-2", "status": "alive"})
			_, active := value(mfs, "vllm_batch_jobs_active", map[string]string{"status": "in_progress"})
			ok = ok && peers == 3 && alive == 3 && dead == 1 && live == 1 && active
		}
		if ok && leaders == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster figures never settled: leaders=%v, per-node checks ok=%v", leaders, ok)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mfs := scrape(t, f)
	if v, _ := value(mfs, "vllm_gpu_temperature_celsius", map[string]string{"agent": "agent-2", "gpu": "0"}); v != 71 {
		t.Errorf("gpu temperature = %v, want 71", v)
	}
	if v, _ := value(mfs, "vllm_throughput_tokens_per_second", map[string]string{"agent": "agent-2", "model": "m"}); v != 99 {
		t.Errorf("throughput = %v, want 99", v)
	}
	// A dead agent's last figures are not its state.
	if v, ok := value(mfs, "vllm_gpu_temperature_celsius", map[string]string{"agent": "agent-1", "gpu": "0"}); ok {
		t.Errorf("dead agent's gpu temperature exported (%v)", v)
	}
	if v, ok := value(mfs, "vllm_model_loaded", map[string]string{"agent": "agent-1", "model": "m"}); ok {
		t.Errorf("dead agent's model loaded exported (%v)", v)
	}
	for _, id := range []string{"agent-1", "agent-2"} {
		if _, ok := value(mfs, "vllm_worker_heartbeat_timestamp", map[string]string{"agent": id}); !ok {
			t.Errorf("no heartbeat timestamp for %s, which sent telemetry", id)
		}
	}
	if v, _ := value(mfs, "vllm_request_total", map[string]string{"endpoint": "/v1/files", "method": "GET", "code": "200"}); v != 1 {
		t.Errorf("GET /v1/files counted %v times, want 1", v)
	}
	if _, ok := value(mfs, "go_goroutines", nil); !ok {
		t.Error("no Go runtime metrics")
	}
}
