package gpu

import (
	"fmt"
	"math/rand/v2"
	"sync"
)

// SimulatedName is the Name of every simulated GPU.
const SimulatedName = "Simulated GPU (vbatch sim)"

// Simulated is a Discoverer of made-up GPUs whose figures drift from one
// Discover to the next like a busy GPU's do, reproducibly for a seed.
type Simulated struct {
	mu   sync.Mutex
	rng  *rand.Rand
	gpus []Info
}

var _ Discoverer = (*Simulated)(nil)

// simMemory is the memory of a simulated GPU: 80 GiB, as an H100's.
const simMemory = 80 << 30

// NewSimulated returns n simulated GPUs (none when n <= 0); the same seed
// gives the same UUIDs and the same sequence of figures.
func NewSimulated(n int, seed int64) *Simulated {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x76626174636873)) // "vbatchs"
	s := &Simulated{rng: rng}
	for i := range max(n, 0) {
		s.gpus = append(s.gpus, Info{
			Index: i,
			Name:  SimulatedName,
			UUID: fmt.Sprintf("GPU-%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff,
				0x4000|rng.Uint32()&0x0fff, 0x8000|rng.Uint32()&0x3fff, rng.Uint64()&0xffffffffffff),
			MemoryTotal:        simMemory,
			MemoryUsed:         simMemory / 2,
			UtilizationPercent: 50,
			TemperatureC:       55,
			PowerMilliwatts:    350_000,
			Simulated:          true,
		})
	}
	return s
}

// Discover returns the GPUs after one step of drift.
func (s *Simulated) Discover() ([]Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.gpus {
		g := &s.gpus[k]
		g.UtilizationPercent = uint32(walk(s.rng, int64(g.UtilizationPercent), 10, 0, 100))
		// Temperature and power follow the load.
		g.TemperatureC = uint32(walk(s.rng, int64(30+g.UtilizationPercent/2), 3, 25, 90))
		g.PowerMilliwatts = uint32(walk(s.rng, int64(70_000+6_000*g.UtilizationPercent), 20_000, 60_000, 700_000))
		used := walk(s.rng, int64(g.MemoryUsed>>20), 2048, 1024, simMemory>>20-512)
		g.MemoryUsed = uint64(used) << 20
	}
	out := make([]Info, len(s.gpus))
	copy(out, s.gpus)
	return out, nil
}

// Close does nothing.
func (s *Simulated) Close() error { return nil }

// walk moves v by a uniform step in [-step, step] and clamps it to [lo, hi].
func walk(rng *rand.Rand, v, step, lo, hi int64) int64 {
	v += rng.Int64N(2*step+1) - step
	return min(max(v, lo), hi)
}
