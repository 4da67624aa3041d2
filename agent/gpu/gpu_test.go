package gpu

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func bufferLogger() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// dgx returns go-nvml's mock DGX A100 with the figures this package reads
// filled in: GPU i runs at 10·i % utilization, 40+i °C and (100+i) W. GPU
// 3 cannot report its temperature.
func dgx() *dgxa100.Server {
	s := dgxa100.New()
	for i, d := range s.Devices {
		dev := d.(*dgxa100.Device)
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 * i), Memory: 5}, nvml.SUCCESS
		}
		dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) {
			if i == 3 {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return uint32(40 + i), nvml.SUCCESS
		}
		dev.GetPowerUsageFunc = func() (uint32, nvml.Return) { return uint32(100_000 + 1000*i), nvml.SUCCESS }
		dev.MemoryInfo.Used = uint64(i) << 30
	}
	return s
}

func TestNVMLDiscoverMock(t *testing.T) {
	logger, logs := bufferLogger()
	lib := dgx()
	n := NewNVMLWithLibrary(lib, logger)
	infos, err := n.Discover()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 8 {
		t.Fatalf("%d GPUs, want 8", len(infos))
	}
	for i, g := range infos {
		if g.Index != i || g.Name != "Mock NVIDIA A100-SXM4-40GB" || !strings.HasPrefix(g.UUID, "GPU-") || g.Simulated {
			t.Fatalf("GPU %d: %+v", i, g)
		}
		if g.MemoryTotal != 40<<30 || g.MemoryUsed != uint64(i)<<30 {
			t.Fatalf("GPU %d memory %d/%d", i, g.MemoryUsed, g.MemoryTotal)
		}
		wantTemp := uint32(40 + i)
		if i == 3 {
			wantTemp = 0
		}
		if g.UtilizationPercent != uint32(10*i) || g.TemperatureC != wantTemp || g.PowerMilliwatts != uint32(100_000+1000*i) {
			t.Fatalf("GPU %d figures: %+v", i, g)
		}
	}
	if !strings.Contains(logs.String(), "field=temperature") {
		t.Fatalf("the missing temperature was not logged:\n%s", logs)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if len(lib.ShutdownCalls()) != 1 {
		t.Fatalf("Shutdown called %d times", len(lib.ShutdownCalls()))
	}
}

func TestNVMLDeviceHandleFails(t *testing.T) {
	lib := dgx()
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 2, nvml.SUCCESS }
	get := lib.DeviceGetHandleByIndexFunc
	lib.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i == 1 {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		return get(i)
	}
	infos, err := NewNVMLWithLibrary(lib, nil).Discover()
	if err != nil || len(infos) != 2 || infos[0].Name == "" || infos[1] != (Info{Index: 1}) {
		t.Fatalf("Discover: %+v %v", infos, err)
	}
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	if _, err := NewNVMLWithLibrary(lib, nil).Discover(); err == nil {
		t.Fatal("a failing device count is not an error")
	}
}

func TestNVMLNoDriver(t *testing.T) {
	logger, logs := bufferLogger()
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }}
	n := NewNVMLWithLibrary(lib, logger)
	for range 3 {
		infos, err := n.Discover()
		if err != nil || len(infos) != 0 {
			t.Fatalf("Discover without driver: %v %v", infos, err)
		}
	}
	if got := strings.Count(logs.String(), "no NVIDIA driver found; running with zero GPUs"); got != 1 || !strings.Contains(logs.String(), "level=INFO") {
		t.Fatalf("logged %d times, want once at info:\n%s", got, logs)
	}
	if len(lib.InitCalls()) != 1 {
		t.Fatalf("Init called %d times", len(lib.InitCalls()))
	}
	if err := n.WatchXID(context.Background(), func(int, uint64) {}); err == nil {
		t.Fatal("WatchXID without a driver succeeded")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNVMLMissingLibrary(t *testing.T) {
	// The real loader, pointed at a library that is not there, as on a
	// host without the driver.
	logger, logs := bufferLogger()
	n := newNVML(nvml.New(nvml.WithLibraryPath(t.TempDir()+"/libnvidia-ml.so.1")), logger, true)
	infos, err := n.Discover()
	if err != nil || len(infos) != 0 || !strings.Contains(logs.String(), "no NVIDIA driver found") {
		t.Fatalf("Discover: %v %v\n%s", infos, err, logs)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestWatchXID(t *testing.T) {
	lib := dgx()
	events := make(chan nvml.EventData, 4)
	set := &mock.EventSet{
		WaitFunc: func(timeout uint32) (nvml.EventData, nvml.Return) {
			select {
			case e := <-events:
				return e, nvml.SUCCESS
			case <-time.After(time.Duration(timeout) * time.Millisecond / 50):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
	for i, d := range lib.Devices {
		dev := d.(*dgxa100.Device)
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			if i%2 == 1 {
				return nvml.EventTypeSingleBitEccError, nvml.SUCCESS
			}
			return nvml.EventTypeXidCriticalError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
		}
		dev.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	}
	n := NewNVMLWithLibrary(lib, nil)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan [2]uint64, 4)
	errc := make(chan error, 1)
	go func() {
		errc <- n.WatchXID(ctx, func(gpu int, xid uint64) {
			got <- [2]uint64{uint64(gpu), xid}
			n.recordXID(gpu, xid)
		})
	}()
	events <- nvml.EventData{Device: lib.Devices[2], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	events <- nvml.EventData{Device: lib.Devices[4], EventType: nvml.EventTypeSingleBitEccError, EventData: 1}
	events <- nvml.EventData{Device: lib.Devices[6], EventType: nvml.EventTypeXidCriticalError, EventData: 48}
	for _, want := range [][2]uint64{{2, 79}, {6, 48}} {
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("event %v, want %v", g, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no XID event")
		}
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("WatchXID: %v", err)
	}
	if x := n.XIDEvents(); len(x) != 2 || x[0] != 79 || x[1] != 48 {
		t.Fatalf("XIDEvents() = %v", x)
	}
	if x := n.XIDEvents(); len(x) != 0 {
		t.Fatalf("XIDEvents() again = %v", x)
	}
	registered := 0
	for _, d := range lib.Devices {
		registered += len(d.(*dgxa100.Device).RegisterEventsCalls())
	}
	if registered != 4 || len(set.FreeCalls()) != 1 {
		t.Fatalf("registered %d devices, freed %d times", registered, len(set.FreeCalls()))
	}
}

func TestWatchXIDUnsupported(t *testing.T) {
	lib := dgx()
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{FreeFunc: func() nvml.Return { return nvml.SUCCESS }}, nvml.SUCCESS
	}
	for _, d := range lib.Devices {
		d.(*dgxa100.Device).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	err := NewNVMLWithLibrary(lib, nil).WatchXID(context.Background(), func(int, uint64) {})
	if err == nil || !strings.Contains(err.Error(), "no GPU supports XID") {
		t.Fatalf("WatchXID: %v", err)
	}
}

func TestSimulated(t *testing.T) {
	a, b := NewSimulated(3, 7), NewSimulated(3, 7)
	var prev []Info
	changed := false
	for range 20 {
		x, err := a.Discover()
		if err != nil {
			t.Fatal(err)
		}
		y, _ := b.Discover()
		if len(x) != 3 {
			t.Fatalf("%d GPUs", len(x))
		}
		for i, g := range x {
			if g != y[i] {
				t.Fatalf("same seed, different GPUs: %+v vs %+v", g, y[i])
			}
			if !g.Simulated || g.Name != SimulatedName || g.Index != i || len(g.UUID) != 40 {
				t.Fatalf("GPU %d: %+v", i, g)
			}
			if g.UtilizationPercent > 100 || g.MemoryUsed > g.MemoryTotal || g.TemperatureC < 25 || g.TemperatureC > 90 || g.PowerMilliwatts < 60_000 {
				t.Fatalf("implausible GPU %+v", g)
			}
			if prev != nil && g != prev[i] {
				changed = true
			}
		}
		prev = x
	}
	if !changed {
		t.Fatal("figures never change")
	}
	if prev[0].UUID == prev[1].UUID {
		t.Fatal("duplicate UUIDs")
	}
	other, _ := NewSimulated(1, 8).Discover()
	if other[0].UUID == prev[0].UUID {
		t.Fatal("different seeds, same UUID")
	}
	if none, _ := NewSimulated(0, 1).Discover(); len(none) != 0 {
		t.Fatalf("NewSimulated(0) found %d GPUs", len(none))
	}
}

func TestToProtoAndDescribe(t *testing.T) {
	infos := []Info{
		{Index: 0, Name: "NVIDIA H200", UUID: "GPU-1", MemoryTotal: 141 << 30, MemoryUsed: 3 << 29, UtilizationPercent: 42, TemperatureC: 38, PowerMilliwatts: 120_500},
		{Index: 1, Simulated: true},
	}
	p := ToProto(infos)
	if len(p) != 2 || p[0].GetName() != "NVIDIA H200" || p[0].GetMemoryTotalBytes() != 141<<30 || p[0].GetMemoryUsedBytes() != 3<<29 ||
		p[0].GetUtilizationPercent() != 42 || p[0].GetTemperatureCelsius() != 38 || p[0].GetPowerMilliwatts() != 120_500 ||
		p[0].GetUuid() != "GPU-1" || p[1].GetIndex() != 1 || !p[1].GetSimulated() {
		t.Fatalf("ToProto: %v", p)
	}
	want := "2 GPUs:\n" +
		"  [0] NVIDIA H200 (GPU-1): memory 1.5/141.0 GiB, utilization 42%, 38°C, 120.5 W\n" +
		"  [1] unknown GPU: memory 0.0/0.0 GiB, utilization 0%, 0°C, 0.0 W [simulated]"
	if got := Describe(infos); got != want {
		t.Fatalf("Describe:\n%s\nwant:\n%s", got, want)
	}
	if got := Describe(nil); got != "no GPUs" {
		t.Fatalf("Describe(nil) = %q", got)
	}
}

// TestXIDWatchRearmsAfterFailure: an event wait that fails (a GPU fell off
// the bus) does not end XID watching: the watch is armed again and a later
// XID is still recorded. A host without XID events stops it for good.
func TestXIDWatchRearmsAfterFailure(t *testing.T) {
	lib := dgx()
	var created atomic.Int32
	events := make(chan nvml.EventData, 1)
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		first := created.Add(1) == 1
		return &mock.EventSet{
			WaitFunc: func(timeout uint32) (nvml.EventData, nvml.Return) {
				if first {
					return nvml.EventData{}, nvml.ERROR_GPU_IS_LOST
				}
				select {
				case e := <-events:
					return e, nvml.SUCCESS
				case <-time.After(10 * time.Millisecond):
					return nvml.EventData{}, nvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	for _, d := range lib.Devices {
		dev := d.(*dgxa100.Device)
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return nvml.EventTypeXidCriticalError, nvml.SUCCESS }
		dev.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	}
	n := NewNVMLWithLibrary(lib, nil)
	n.xidRetry = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.watchXIDs(ctx)
	}()
	events <- nvml.EventData{Device: lib.Devices[1], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	deadline := time.Now().Add(10 * time.Second)
	var got []uint64
	for len(got) == 0 && time.Now().Before(deadline) {
		got = n.XIDEvents()
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if len(got) != 1 || got[0] != 79 || created.Load() < 2 {
		t.Fatalf("XIDs %v after %d event sets, want [79] from a re-armed watch", got, created.Load())
	}

	// Without XID support it stops at once.
	for _, d := range lib.Devices {
		d.(*dgxa100.Device).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		n.watchXIDs(context.Background())
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("watch kept going on a host without XID events")
	}
}
