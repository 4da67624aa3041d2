package gpu

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestNVMLRealDevice checks discovery against the real driver through
// go-nvml's default loader. It runs only on a GPU host, when
// VBATCH_NVML_DEVICE_TEST=1.
func TestNVMLRealDevice(t *testing.T) {
	if os.Getenv("VBATCH_NVML_DEVICE_TEST") != "1" {
		t.Skip("set VBATCH_NVML_DEVICE_TEST=1 on a host with an NVIDIA GPU")
	}
	logger, logs := bufferLogger()
	n := NewNVML(logger)
	infos, err := n.Discover()
	if err != nil {
		t.Fatal(err)
	}
	t.Log(Describe(infos))
	if len(infos) == 0 {
		t.Fatalf("no GPUs found:\n%s", logs)
	}
	for _, g := range infos {
		if g.Name == "" || !strings.HasPrefix(g.UUID, "GPU-") || g.MemoryTotal == 0 || g.MemoryUsed > g.MemoryTotal ||
			g.TemperatureC == 0 || g.TemperatureC > 120 || g.PowerMilliwatts == 0 || g.UtilizationPercent > 100 || g.Simulated {
			t.Errorf("implausible GPU %+v", g)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = n.WatchXID(ctx, func(gpu int, xid uint64) { t.Logf("XID %d on GPU %d", xid, gpu) })
	t.Logf("WatchXID returned %v after %v", err, time.Since(start).Round(time.Millisecond))
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("log:\n%s", logs)
}
