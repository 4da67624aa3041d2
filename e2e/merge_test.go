package e2e

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// TestResultFilesMerged: once a finished batch is older than
// --batch-compact-after, the leader merges its output file's parts (one
// per chunk here) into one blob; the file reads back byte for byte the
// same through every coordinator.
func TestResultFilesMerged(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	const n = 1000
	c := StartCluster(t, 3, ClusterOptions{Extra: []string{"--chunk-size", "100", "--batch-compact-after", "1s"}})
	s := c.StartSim(t, "sim1", "--latency", "1ms")
	c.StartAgent(t, "agent1", "--engine", "openai", "--engine-url", "http://"+s.Addr, "--concurrency", "16", "--part-lines", "50")
	c.WaitAgents(t, 1)
	p := &pipeline{Cluster: c}
	b := p.submit(t, n, "sim-model", "24h")
	done := waitBatch(t, c.client(0, ""), b.ID, 2*time.Minute, statusIs(openai.BatchStatusCompleted))
	before := content(t, c.client(0, ""), done.OutputFileID)
	if got := len(lines(before)); got != n {
		t.Fatalf("%d output lines, want %d", got, n)
	}

	merged := func() int64 {
		var total int64
		for i := range c.Coords {
			m, err := scrapeUnlabeled(http.DefaultClient, c.Coords[i].URL(), map[string]bool{"vbatch_files_merged_total": true})
			if err == nil {
				total += int64(m["vbatch_files_merged_total"])
			}
		}
		return total
	}
	WaitFor(t, 60*time.Second, "the leader to merge the output file", func() bool { return merged() >= 1 })
	for i := range c.Coords {
		after := content(t, c.client(i, ""), done.OutputFileID)
		if !bytes.Equal(after, before) {
			t.Fatalf("coordinator %d: merged output file differs (%d bytes, was %d)", i, len(after), len(before))
		}
	}
	t.Logf("output file of %d bytes merged and read back through every coordinator", len(before))
}
