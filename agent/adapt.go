package agent

import (
	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/agent/gpu"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// This file is the seam between the agent core and the engine and GPU
// packages: the conversions to wire types and the optional XID source.

// gpusToProto converts discovered GPUs to their wire form.
func gpusToProto(infos []gpu.Info) []*vbatchv1.GPU {
	return gpu.ToProto(infos)
}

// engineStatsToProto converts an engine's stats to their wire form.
func engineStatsToProto(st engine.Stats) []*vbatchv1.EngineStats {
	return []*vbatchv1.EngineStats{{
		Model:                st.Model,
		Loaded:               st.Loaded,
		LoadDurationSeconds:  st.LoadDurationSeconds,
		RequestsRunning:      st.RequestsRunning,
		RequestsWaiting:      st.RequestsWaiting,
		TokensPerSecond:      st.TokensPerSecond,
		TokensGeneratedTotal: st.TokensGeneratedTotal,
	}}
}

// xidSource is implemented by GPU discoverers that watch for XID errors
// (GPU faults reported by the driver). XIDEvents returns the events seen
// since the previous call.
type xidSource interface {
	XIDEvents() []uint64
}

// takeXIDs returns the XID events not yet reported.
func (a *Agent) takeXIDs() []uint64 {
	a.xidMu.Lock()
	defer a.xidMu.Unlock()
	if src, ok := a.gpus.(xidSource); ok {
		a.xidPending = append(a.xidPending, src.XIDEvents()...)
	}
	out := a.xidPending
	a.xidPending = nil
	return out
}

// requeueXIDs keeps events of a report that did not get through, up to a
// bound so a long outage cannot grow them without limit.
func (a *Agent) requeueXIDs(ev []uint64) {
	if len(ev) == 0 {
		return
	}
	a.xidMu.Lock()
	defer a.xidMu.Unlock()
	a.xidPending = append(ev, a.xidPending...)
	if n := len(a.xidPending); n > 1024 {
		a.xidPending = a.xidPending[n-1024:]
	}
}
