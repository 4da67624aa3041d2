package coordinator

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus/testutil"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestTelemetryReachesEveryCoordinator(t *testing.T) {
	nodes := startCluster(t, 3)
	// Gossip must list every coordinator before the hand-off can reach it.
	deadline := time.Now().Add(10 * time.Second)
	for len(nodes[0].pool.Members()) < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	report := &vbatchv1.TelemetryRequest{
		AgentId:      "gpu-01",
		SentAtUnixMs: time.Now().UnixMilli(),
		Gpus:         []*vbatchv1.GPU{{Index: 0, Name: "NVIDIA H200", TemperatureCelsius: 41}},
		XidEvents:    []uint64{79, 48},
	}
	if _, err := nodes[0].agents.Telemetry(context.Background(), connect.NewRequest(report)); err != nil {
		t.Fatal(err)
	}
	for _, c := range nodes {
		deadline := time.Now().Add(5 * time.Second)
		for {
			if tel, ok := c.agents.latestTelemetry()["gpu-01"]; ok {
				if g := tel.Report.Gpus; len(g) != 1 || g[0].TemperatureCelsius != 41 {
					t.Fatalf("%s holds %v", c.cfg.NodeID, g)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never received the agent's telemetry", c.cfg.NodeID)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The XID events count once on every coordinator, whichever received
	// the report.
	for _, c := range nodes {
		if n := testutil.ToFloat64(c.metrics.XIDErrors.WithLabelValues("gpu-01")); n != 2 {
			t.Errorf("%s counts %v XID errors, want 2", c.cfg.NodeID, n)
		}
	}
	// An older report does not replace a newer one, nor does the same
	// report count twice.
	old := &vbatchv1.TelemetryRequest{AgentId: "gpu-01", SentAtUnixMs: report.SentAtUnixMs - 1000, XidEvents: report.XidEvents}
	nodes[1].agents.store(old, time.Now())
	nodes[1].agents.store(report, time.Now())
	if got := nodes[1].agents.latestTelemetry()["gpu-01"]; got.Report.SentAtUnixMs != report.SentAtUnixMs {
		t.Fatal("an older report replaced a newer one")
	}
	if n := testutil.ToFloat64(nodes[1].metrics.XIDErrors.WithLabelValues("gpu-01")); n != 2 {
		t.Errorf("after repeats: %v XID errors, want 2", n)
	}
	// The agent's clock stepped back an hour: once the report held is
	// stale, its reports count again (XIDs included) rather than being
	// ignored until real time catches up.
	held := nodes[1].agents.latestTelemetry()["gpu-01"].ReceivedAt
	stepped := &vbatchv1.TelemetryRequest{AgentId: "gpu-01", SentAtUnixMs: report.SentAtUnixMs - 3600_000, XidEvents: report.XidEvents[:1]}
	nodes[1].agents.store(stepped, held.Add(time.Second))
	if got := nodes[1].agents.latestTelemetry()["gpu-01"]; got.Report.SentAtUnixMs != report.SentAtUnixMs {
		t.Fatal("a report from a clock an hour behind replaced a fresh one")
	}
	nodes[1].agents.store(stepped, held.Add(telemetryStale+time.Second))
	if got := nodes[1].agents.latestTelemetry()["gpu-01"]; got.Report.SentAtUnixMs != stepped.SentAtUnixMs {
		t.Fatal("a stale report kept out the agent's reports after its clock stepped back")
	}
	if n := testutil.ToFloat64(nodes[1].metrics.XIDErrors.WithLabelValues("gpu-01")); n != 3 {
		t.Errorf("after the clock step: %v XID errors, want 3", n)
	}
}
