package coordinator

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

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
	// An older report does not replace a newer one.
	old := &vbatchv1.TelemetryRequest{AgentId: "gpu-01", SentAtUnixMs: report.SentAtUnixMs - 1000}
	nodes[1].agents.store(old, time.Now())
	if got := nodes[1].agents.latestTelemetry()["gpu-01"]; got.Report.SentAtUnixMs != report.SentAtUnixMs {
		t.Fatal("an older report replaced a newer one")
	}
}
