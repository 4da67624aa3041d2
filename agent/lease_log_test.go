package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vbatch/vbatch/monitoring"
)

// lockedBuffer is an io.Writer the agent's goroutines can log to while the
// test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLeaseLogLinesCarryBatchID checks that the lines an agent logs about a
// lease carry the batch_id key, the one the log shipper indexes, so an
// operator querying Loki by batch_id finds the agent's side of a batch.
func TestLeaseLogLinesCarryBatchID(t *testing.T) {
	coord := newFakeCoord(t, inputLines(30))
	cfg := testConfig(t, coord, "agent-log")
	cfg.PartInterval = 20 * time.Millisecond
	var out lockedBuffer
	a := New(cfg, newFakeEngine(), fakeGPUs{}, monitoring.NewLogger(&out, "debug", "agent"))
	runAgent(t, a)
	waitFor(t, "lease finished line", func() bool { return strings.Contains(out.String(), `"msg":"lease finished"`) })

	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		msg, _ := rec["msg"].(string)
		if msg != "lease granted" && msg != "lease finished" {
			continue
		}
		seen[msg] = true
		if rec["batch_id"] != fakeBatch {
			t.Errorf("%q line has batch_id %v, want %q: %s", msg, rec["batch_id"], fakeBatch, sc.Text())
		}
		if _, ok := rec["batch"]; ok {
			t.Errorf("%q line still carries the batch key: %s", msg, sc.Text())
		}
	}
	if !seen["lease granted"] || !seen["lease finished"] {
		t.Fatalf("lease lines seen %v in:\n%s", seen, out.String())
	}
}
