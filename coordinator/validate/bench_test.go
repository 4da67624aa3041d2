package validate

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// chatFile builds a batch input file of n chat requests, each line exactly
// lineLen bytes long with its newline.
func chatFile(n, lineLen int) []byte {
	var b bytes.Buffer
	b.Grow(n * lineLen)
	for i := range n {
		head := fmt.Sprintf(`{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"`, i)
		const tail = `"}]}}`
		b.WriteString(head)
		b.WriteString(strings.Repeat("x", lineLen-len(head)-len(tail)-1))
		b.WriteString(tail)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// BenchmarkValidate validates a 20 MB file of 10,000 chat lines of 2,000
// bytes with the map-based reference and with Validate, one after the
// other in each iteration, and reports the throughput and allocations of
// each and the ratio of their throughputs. (ns/op is the two together.)
func BenchmarkValidate(b *testing.B) {
	const lines = 10000
	data := chatFile(lines, 2000)
	opts := Options{MaxTokens: 4096, MaxN: 4}
	var refTime, newTime time.Duration
	var refAllocs, newAllocs uint64
	var ms runtime.MemStats
	runs := 0
	for b.Loop() {
		runtime.ReadMemStats(&ms)
		m0, t0 := ms.Mallocs, time.Now()
		ref, err := referenceValidate(bytes.NewReader(data), ep, opts)
		t1 := time.Now()
		runtime.ReadMemStats(&ms)
		m1, t2 := ms.Mallocs, time.Now()
		res, err2 := Validate(bytes.NewReader(data), ep, opts)
		t3 := time.Now()
		runtime.ReadMemStats(&ms)
		if err != nil || err2 != nil || len(ref.Errors) != 0 || len(res.Errors) != 0 || res.Total != lines {
			b.Fatalf("reference %v %v, Validate %v %+v", err, ref.Errors, err2, res)
		}
		refTime += t1.Sub(t0)
		newTime += t3.Sub(t2)
		refAllocs += m1 - m0
		newAllocs += ms.Mallocs - m1
		runs++
	}
	mb := float64(len(data)) * float64(runs) / 1e6
	b.ReportMetric(mb/refTime.Seconds(), "ref-MB/s")
	b.ReportMetric(mb/newTime.Seconds(), "new-MB/s")
	b.ReportMetric(refTime.Seconds()/newTime.Seconds(), "speedup")
	b.ReportMetric(float64(refAllocs)/float64(runs*lines), "ref-allocs/line")
	b.ReportMetric(float64(newAllocs)/float64(runs*lines), "new-allocs/line")
}

// TestValidateAllocations checks that Validate allocates nothing per line
// of a valid file: what it allocates grows with the number of chunks and
// the map of custom_id hashes, not with the number of lines.
func TestValidateAllocations(t *testing.T) {
	allocs := func(n int) float64 {
		data := chatFile(n, 300)
		return testing.AllocsPerRun(3, func() {
			res, err := Validate(bytes.NewReader(data), ep, Options{ChunkSize: 1000, MaxTokens: 10, MaxN: 1})
			if err != nil || len(res.Errors) != 0 {
				t.Fatalf("%v %v", err, errsOf(res))
			}
		})
	}
	small, large := allocs(1000), allocs(16000)
	t.Logf("allocations: %.0f for 1,000 lines, %.0f for 16,000", small, large)
	if large-small > 15000/100 {
		t.Fatalf("15,000 more lines cost %.0f more allocations; want under one per 100 lines", large-small)
	}
}
