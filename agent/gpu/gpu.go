// Package gpu discovers the GPUs of an agent's host: through NVML (the
// library that ships with the NVIDIA driver, via go-nvml) on a GPU host,
// or simulated ones for development and tests. A host without the driver
// is not an error: it has zero GPUs.
package gpu

import (
	"fmt"
	"strings"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Info is one GPU as last observed. A figure NVML could not read is 0.
type Info struct {
	// Index is NVML's index of the device (the order of nvidia-smi).
	Index int
	// Name is the product name, e.g. "NVIDIA H200".
	Name string
	// UUID is the device's stable identity, e.g. "GPU-6c2f…".
	UUID string
	// MemoryTotal and MemoryUsed are framebuffer bytes.
	MemoryTotal, MemoryUsed uint64
	// UtilizationPercent is the share of time a kernel ran over the last
	// sample period (0–100).
	UtilizationPercent uint32
	// TemperatureC is the GPU core temperature in degrees Celsius.
	TemperatureC uint32
	// PowerMilliwatts is the board's power draw.
	PowerMilliwatts uint32
	// Simulated marks a GPU made up by NewSimulated.
	Simulated bool
}

// Discoverer reports the host's GPUs.
type Discoverer interface {
	// Discover returns every GPU with its current figures; none (and no
	// error) on a host without GPUs or driver.
	Discover() ([]Info, error)
	// Close releases what the discoverer holds (NVML, watchers).
	Close() error
}

// ToProto converts the GPU to its wire form.
func (i Info) ToProto() *vbatchv1.GPU {
	return &vbatchv1.GPU{
		Index:              uint32(max(i.Index, 0)),
		Name:               i.Name,
		Uuid:               i.UUID,
		MemoryTotalBytes:   i.MemoryTotal,
		MemoryUsedBytes:    i.MemoryUsed,
		UtilizationPercent: i.UtilizationPercent,
		TemperatureCelsius: i.TemperatureC,
		PowerMilliwatts:    i.PowerMilliwatts,
		Simulated:          i.Simulated,
	}
}

// ToProto converts GPUs to their wire form.
func ToProto(infos []Info) []*vbatchv1.GPU {
	out := make([]*vbatchv1.GPU, len(infos))
	for k, i := range infos {
		out[k] = i.ToProto()
	}
	return out
}

// Describe renders GPUs for a log line or a terminal, one GPU a line.
func Describe(infos []Info) string {
	if len(infos) == 0 {
		return "no GPUs"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d GPU", len(infos))
	if len(infos) != 1 {
		b.WriteString("s")
	}
	b.WriteString(":")
	const gib = 1 << 30
	for _, i := range infos {
		name := i.Name
		if name == "" {
			name = "unknown GPU"
		}
		fmt.Fprintf(&b, "\n  [%d] %s", i.Index, name)
		if i.UUID != "" {
			fmt.Fprintf(&b, " (%s)", i.UUID)
		}
		fmt.Fprintf(&b, ": memory %.1f/%.1f GiB, utilization %d%%, %d°C, %.1f W",
			float64(i.MemoryUsed)/gib, float64(i.MemoryTotal)/gib, i.UtilizationPercent, i.TemperatureC, float64(i.PowerMilliwatts)/1000)
		if i.Simulated {
			b.WriteString(" [simulated]")
		}
	}
	return b.String()
}
