package blob

import (
	"io"
	"runtime"
	"testing"
)

// patternReader yields n bytes of a cheap deterministic pattern without
// allocating, sampling the heap as it goes.
type patternReader struct {
	n, off   int64
	base     uint64 // shifts the pattern, for distinct contents
	every    int64
	next     int64
	peakHeap uint64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := p.base + uint64(p.off) + uint64(i)
		b[i] = byte(x ^ x>>8 ^ x>>16)
	}
	p.off += int64(len(b))
	if p.off >= p.next {
		p.next += p.every
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		p.peakHeap = max(p.peakHeap, ms.HeapInuse)
	}
	return len(b), nil
}

func TestIngestMemory(t *testing.T) {
	const size = 64 << 20
	const limit = 16 << 20
	s := newStore(t)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	pr := &patternReader{n: size, every: 4 << 20, next: 4 << 20}
	ref, err := s.Ingest(pr)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if ref.Bytes != size {
		t.Fatalf("ingested %d bytes", ref.Bytes)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
		t.Errorf("ingesting %d MiB allocated %d MiB", size>>20, alloc>>20)
	}
	if pr.peakHeap > before.HeapInuse && pr.peakHeap-before.HeapInuse > limit {
		t.Errorf("heap in use grew by %d MiB while ingesting %d MiB", (pr.peakHeap-before.HeapInuse)>>20, size>>20)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapInuse > before.HeapInuse && after.HeapInuse-before.HeapInuse > limit {
		t.Errorf("heap in use grew by %d MiB after ingest", (after.HeapInuse-before.HeapInuse)>>20)
	}

	// A full verified read streams too.
	runtime.GC()
	runtime.ReadMemStats(&before)
	rc, err := s.Open(ref.Sha256)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	_ = rc.Close()
	if err != nil || n != size {
		t.Fatalf("read back %d bytes: %v", n, err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
		t.Errorf("reading %d MiB allocated %d MiB", size>>20, alloc>>20)
	}
}

func BenchmarkIngest(b *testing.B) {
	const size = 16 << 20
	s := newStore(b)
	b.SetBytes(size)
	b.ReportAllocs()
	seed := uint64(0)
	for b.Loop() {
		seed++
		// Distinct content each time so no iteration is a dedupe hit.
		ref, err := s.Ingest(&patternReader{n: size, base: seed << 32, every: 1 << 62, next: 1 << 62})
		if err != nil {
			b.Fatal(err)
		}
		if ref.Bytes != size {
			b.Fatalf("ingested %d bytes, want %d", ref.Bytes, size)
		}
	}
}
