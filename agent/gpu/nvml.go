package gpu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// maxPendingXIDs bounds the XID events kept for XIDEvents between calls.
const maxPendingXIDs = 1024

// NVML discovers GPUs through the NVIDIA Management Library. It loads the
// library on first use; a host without it (or without a working driver)
// has zero GPUs, which is logged once at info level.
type NVML struct {
	lib       nvml.Interface
	log       *slog.Logger
	autoWatch bool
	// xidRetry is the first wait before the XID watch is armed again
	// after it failed; it doubles up to xidRetryMax.
	xidRetry time.Duration

	mu     sync.Mutex
	state  nvmlState
	cancel context.CancelFunc // of the XID watcher
	done   chan struct{}
	xids   []uint64
}

type nvmlState int

const (
	nvmlUnloaded nvmlState = iota
	nvmlReady
	nvmlAbsent // no driver: zero GPUs for good
	nvmlClosed
)

var _ Discoverer = (*NVML)(nil)

// NewNVML returns a discoverer backed by the system's NVML
// (libnvidia-ml.so.1). Once NVML is up it also watches for XID errors in
// the background; XIDEvents returns them.
func NewNVML(logger *slog.Logger) *NVML {
	return newNVML(nvml.New(), logger, true)
}

// NewNVMLWithLibrary returns a discoverer backed by lib, e.g. one of
// go-nvml's mocks. It does not watch for XIDs by itself; call WatchXID.
func NewNVMLWithLibrary(lib nvml.Interface, logger *slog.Logger) *NVML {
	return newNVML(lib, logger, false)
}

func newNVML(lib nvml.Interface, logger *slog.Logger, autoWatch bool) *NVML {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &NVML{lib: lib, log: logger, autoWatch: autoWatch, xidRetry: xidRetryMin}
}

// Bounds of the wait before an XID watch that failed is armed again.
const (
	xidRetryMin = 5 * time.Second
	xidRetryMax = time.Minute
)

// ErrNoXIDEvents means XID errors cannot be watched on this host at all:
// NVML is unavailable, or no GPU supports XID events.
var ErrNoXIDEvents = errors.New("no XID events on this host")

// watchXIDs runs WatchXID until ctx ends. A watch that fails (a GPU that
// fell off the bus fails the event wait, just when XIDs matter most) is
// armed again with back-off; only a host without XID events stops it.
func (n *NVML) watchXIDs(ctx context.Context) {
	wait := n.xidRetry
	for {
		err := n.WatchXID(ctx, n.recordXID)
		if ctx.Err() != nil {
			return
		}
		if err == nil || errors.Is(err, ErrNoXIDEvents) {
			n.log.Info("not watching for GPU XID errors", "err", err)
			return
		}
		n.log.Warn("GPU XID watch failed; arming it again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, xidRetryMax)
	}
}

// ready initializes NVML on first use and reports whether it is usable.
func (n *NVML) ready() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != nvmlUnloaded {
		return n.state == nvmlReady
	}
	if ret := n.lib.Init(); ret != nvml.SUCCESS {
		n.state = nvmlAbsent
		n.log.Info("no NVIDIA driver found; running with zero GPUs", "nvml", nvmlError(ret))
		return false
	}
	n.state = nvmlReady
	if v, ret := n.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		n.log.Info("NVML ready", "driver_version", v)
	}
	if n.autoWatch {
		ctx, cancel := context.WithCancel(context.Background())
		n.cancel, n.done = cancel, make(chan struct{})
		go func() {
			defer close(n.done)
			n.watchXIDs(ctx)
		}()
	}
	return true
}

// Discover implements Discoverer.
func (n *NVML) Discover() ([]Info, error) {
	if !n.ready() {
		return nil, nil
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device count: %w", nvmlError(ret))
	}
	out := make([]Info, 0, count)
	for i := range count {
		out = append(out, n.device(i))
	}
	return out, nil
}

// device reads GPU i; each figure that cannot be read stays 0.
func (n *NVML) device(i int) Info {
	info := Info{Index: i}
	d, ret := n.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		n.log.Warn("nvml device handle", "gpu", i, "nvml", nvmlError(ret))
		return info
	}
	fail := func(field string, ret nvml.Return) {
		n.log.Debug("nvml field unavailable", "gpu", i, "field", field, "nvml", nvmlError(ret))
	}
	if v, ret := d.GetName(); ret == nvml.SUCCESS {
		info.Name = v
	} else {
		fail("name", ret)
	}
	if v, ret := d.GetUUID(); ret == nvml.SUCCESS {
		info.UUID = v
	} else {
		fail("uuid", ret)
	}
	if m, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
		info.MemoryTotal, info.MemoryUsed = m.Total, m.Used
	} else {
		fail("memory", ret)
	}
	if u, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
		info.UtilizationPercent = u.Gpu
	} else {
		fail("utilization", ret)
	}
	// GetTemperature is deprecated in favour of GetTemperatureV, which
	// needs a newer driver and cannot be mocked; this one works everywhere.
	if v, ret := d.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		info.TemperatureC = v
	} else {
		fail("temperature", ret)
	}
	if v, ret := d.GetPowerUsage(); ret == nvml.SUCCESS {
		info.PowerMilliwatts = v
	} else {
		fail("power", ret)
	}
	return info
}

// WatchXID calls fn for every XID error (a GPU fault reported by the
// driver) until ctx ends. It returns an error wrapping ErrNoXIDEvents at
// once when NVML is absent or no GPU supports XID events, another error
// when NVML fails on the way, and nil when ctx ends.
func (n *NVML) WatchXID(ctx context.Context, fn func(gpu int, xid uint64)) error {
	if !n.ready() {
		return fmt.Errorf("nvml unavailable: %w", ErrNoXIDEvents)
	}
	set, ret := n.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("nvml event set: %w", nvmlError(ret))
	}
	defer set.Free()
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("nvml device count: %w", nvmlError(ret))
	}
	registered := 0
	for i := range count {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		types, ret := d.GetSupportedEventTypes()
		if ret != nvml.SUCCESS || types&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		if ret := d.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret != nvml.SUCCESS {
			n.log.Debug("nvml register xid events", "gpu", i, "nvml", nvmlError(ret))
			continue
		}
		registered++
	}
	if registered == 0 {
		return fmt.Errorf("no GPU supports XID events: %w", ErrNoXIDEvents)
	}
	for ctx.Err() == nil {
		// A short wait keeps the loop responsive to ctx.
		data, ret := set.Wait(500)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		default:
			return fmt.Errorf("nvml event wait: %w", nvmlError(ret))
		}
		if data.EventType&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		gpu := -1
		if data.Device != nil {
			if idx, ret := data.Device.GetIndex(); ret == nvml.SUCCESS {
				gpu = idx
			}
		}
		n.log.Warn("GPU XID error", "gpu", gpu, "xid", data.EventData)
		fn(gpu, data.EventData)
	}
	return nil
}

// recordXID keeps an event for XIDEvents, dropping the oldest beyond a bound.
func (n *NVML) recordXID(_ int, xid uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.xids = append(n.xids, xid)
	if len(n.xids) > maxPendingXIDs {
		n.xids = n.xids[len(n.xids)-maxPendingXIDs:]
	}
}

// XIDEvents returns the XID errors seen since the previous call (the
// agent reports them with its telemetry).
func (n *NVML) XIDEvents() []uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.xids
	n.xids = nil
	return out
}

// Close stops the XID watcher and shuts NVML down.
func (n *NVML) Close() error {
	n.mu.Lock()
	cancel, done, state := n.cancel, n.done, n.state
	n.cancel, n.state = nil, nvmlClosed
	n.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	if state != nvmlReady {
		return nil
	}
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %w", nvmlError(ret))
	}
	return nil
}

// nvmlError turns an NVML return code into an error. (Return implements
// error itself, but its message needs the library loaded; the code's name
// always works.)
func nvmlError(ret nvml.Return) error {
	return fmt.Errorf("nvml return %d (%s)", int32(ret), returnName(ret))
}

// returnName names the return codes this package meets.
func returnName(ret nvml.Return) string {
	switch ret {
	case nvml.SUCCESS:
		return "success"
	case nvml.ERROR_UNINITIALIZED:
		return "uninitialized"
	case nvml.ERROR_NOT_SUPPORTED:
		return "not supported"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission"
	case nvml.ERROR_NOT_FOUND:
		return "not found"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "driver not loaded"
	case nvml.ERROR_TIMEOUT:
		return "timeout"
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "library not found"
	case nvml.ERROR_GPU_IS_LOST:
		return "GPU is lost"
	case nvml.ERROR_FUNCTION_NOT_FOUND:
		return "function not found"
	default:
		return "error"
	}
}
