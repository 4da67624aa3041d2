package e2e

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// TestPoisonRequestIsIsolated runs a batch with one request that crashes
// the engine every time it runs: two agents with the vllm engine, each
// supervising a stand-in that exits whenever it gets that request. The crashes are
// reported with the leases; the coordinator has the lines that were in
// flight run one at a time; the poison request, once it crashed both
// engines alone, lands in the error file as engine_crashed, and every other
// request in the output file, each exactly once.
func TestPoisonRequestIsIsolated(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	const n, poison = 150, 77
	c := StartCluster(t, 3, ClusterOptions{Extra: []string{"--chunk-size", "50"}})
	// Two agents: a line is failed only once both engines crashed under
	// it alone, so that one failing GPU cannot condemn it.
	for _, id := range []string{"gpu1", "gpu2"} {
		script, _ := standInVLLM(t, c.Bin, "--latency", "20ms", "--crash-on", "POISON-PILL")
		c.StartAgent(t, id, "--engine", "vllm", "--vllm-bin", script, "--concurrency", "16")
	}
	c.WaitAgents(t, 2)

	p := &pipeline{Cluster: c}
	cl := c.client(0, "")
	input := bytes.Replace(chatLines(n, "sim-model"), []byte(`"question number 77"`), []byte(`"POISON-PILL question 77"`), 1)
	if bytes.Equal(input, chatLines(n, "sim-model")) {
		t.Fatal("no line to poison")
	}
	f := upload(t, cl, "poison.jsonl", input)
	b, err := cl.Batches.New(t.Context(), openai.BatchNewParams{
		InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow("24h"),
	})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	done := waitBatch(t, cl, b.ID, 3*time.Minute, statusIs(openai.BatchStatusCompleted))
	out, errs := p.exactlyOnce(t, done, n)
	if len(out) != n-1 || len(errs) != 1 || done.RequestCounts.Failed != 1 {
		t.Fatalf("%d output lines, %d error lines (counts %+v); want %d and 1", len(out), len(errs), done.RequestCounts, n-1)
	}
	var line struct {
		CustomID string `json:"custom_id"`
		Error    struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(errs[0]), &line); err != nil {
		t.Fatalf("error line %q: %v", errs[0], err)
	}
	if line.CustomID != "req-77" || line.Error.Code != "engine_crashed" || !strings.Contains(line.Error.Message, "alone") {
		t.Fatalf("error line %s, want req-%d failed as engine_crashed", errs[0], poison)
	}
}
