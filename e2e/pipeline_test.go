package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// pipeline is a cluster of three coordinators and two agents, each agent
// driving its own standalone simulator so that the requests every engine
// served can be counted even after an agent dies.
type pipeline struct {
	*Cluster
	sims   []*Sim
	agents []*Agent
}

const leaseTTL = 3 * time.Second

func startPipeline(t *testing.T) *pipeline {
	c := StartCluster(t, 3, ClusterOptions{Extra: []string{"--chunk-size", "500", "--lease-ttl", leaseTTL.String()}})
	p := &pipeline{Cluster: c}
	for i := 1; i <= 2; i++ {
		s := c.StartSim(t, fmt.Sprintf("sim%d", i), "--latency", "10ms")
		p.sims = append(p.sims, s)
		p.agents = append(p.agents, c.StartAgent(t, fmt.Sprintf("agent%d", i),
			"--engine", "openai", "--engine-url", "http://"+s.Addr, "--concurrency", "16", "--part-lines", "100"))
	}
	// An agent of its own for slow-model, slow enough that a batch of it
	// is still running when its one-minute window ends.
	p.agents = append(p.agents, c.StartAgent(t, "slowagent", "--model", "slow-model",
		"--engine", "sim", "--sim-latency", "100ms", "--concurrency", "4", "--part-lines", "20"))
	c.WaitAgents(t, 3)
	return p
}

func (p *pipeline) served(t *testing.T) int64 {
	var n int64
	for _, s := range p.sims {
		n += s.Served(t)
	}
	return n
}

// submit uploads n requests for model and creates a batch.
func (p *pipeline) submit(t *testing.T, n int, model, window string) *openai.Batch {
	t.Helper()
	cl := p.client(p.Running(-1)[0], "")
	f := upload(t, cl, "in.jsonl", chatLines(n, model))
	b, err := cl.Batches.New(context.Background(), openai.BatchNewParams{
		InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow(window),
	})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	return b
}

func (p *pipeline) waitDone(t *testing.T, id string, atLeast int64) *openai.Batch {
	t.Helper()
	return waitBatch(t, p.client(p.Running(-1)[0], ""), id, 2*time.Minute, func(b *openai.Batch) bool {
		return b.RequestCounts.Completed+b.RequestCounts.Failed >= atLeast
	})
}

// allExpired fails the test unless every error line is batch_expired.
func allExpired(t *testing.T, errs []string) {
	t.Helper()
	for _, l := range errs {
		if !strings.Contains(l, `"batch_expired"`) {
			t.Fatalf("expired line without batch_expired: %s", l)
		}
	}
}

func (p *pipeline) waitStatus(t *testing.T, id string, s openai.BatchStatus, timeout time.Duration) *openai.Batch {
	t.Helper()
	return waitBatch(t, p.client(p.Running(-1)[0], ""), id, timeout, statusIs(s))
}

// exactlyOnce downloads a finished batch's files and checks that every
// custom_id req-0..req-(n-1) appears exactly once across them. It returns
// the output and error lines.
func (p *pipeline) exactlyOnce(t *testing.T, b *openai.Batch, n int) (out, errs []string) {
	t.Helper()
	cl := p.client(p.Running(-1)[0], "")
	seen := map[string]int{}
	read := func(id string) []string {
		if id == "" {
			return nil
		}
		ls := lines(content(t, cl, id))
		for _, l := range ls {
			var v struct {
				CustomID string `json:"custom_id"`
			}
			if err := json.Unmarshal([]byte(l), &v); err != nil {
				t.Fatalf("result line is not JSON: %q", l)
			}
			seen[v.CustomID]++
		}
		return ls
	}
	out, errs = read(b.OutputFileID), read(b.ErrorFileID)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("req-%d", i)
		if seen[id] != 1 {
			t.Fatalf("custom_id %s appears %d times (output %d lines, errors %d lines)", id, seen[id], len(out), len(errs))
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct custom_ids, want %d", len(seen), n)
	}
	return out, errs
}

// staleRefused sums vbatch_stale_results_refused_total over coordinators.
func (p *pipeline) staleRefused(t *testing.T) int64 {
	return p.coordCounter(staleMetric)
}

// coordCounter sums an unlabelled counter over the running coordinators
// (one that does not answer counts zero).
func (p *pipeline) coordCounter(name string) int64 {
	var total int64
	for _, i := range p.Running(-1) {
		if m, err := scrapeUnlabeled(http.DefaultClient, p.Coords[i].URL(), map[string]bool{name: true}); err == nil {
			total += int64(m[name])
		}
	}
	return total
}

// TestBatchPipeline runs batches through real coordinators and agents,
// with agents killed and frozen mid-batch, a cancel and an expiry.
func TestBatchPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	p := startPipeline(t)

	// A batch for a model nobody serves, with a one-minute window: it waits,
	// then expires with one batch_expired line per request.
	expiring := p.submit(t, 300, "unserved-model", "1m")
	// One that agents are busy with when its window ends: it must end
	// then, not once its agents run out of work.
	busy := p.submit(t, 6000, "slow-model", "1m")

	t.Run("10k exactly once", func(t *testing.T) {
		b := p.submit(t, 10000, "sim-model", "24h")
		done := p.waitStatus(t, b.ID, openai.BatchStatusCompleted, 3*time.Minute)
		out, errs := p.exactlyOnce(t, done, 10000)
		if len(out) != 10000 || len(errs) != 0 || done.RequestCounts.Completed != 10000 {
			t.Fatalf("output %d error %d counts %+v", len(out), len(errs), done.RequestCounts)
		}
		if done.Usage.TotalTokens == 0 {
			t.Fatalf("usage not summed: %+v", done.Usage)
		}
		// Every coordinator runs this build, so chunks complete with their
		// last part (CompletePart) rather than a separate Complete call.
		if n := p.coordCounter("vbatch_chunks_completed_by_part_total"); n == 0 {
			t.Fatal("no chunk completed with its last part")
		} else {
			t.Logf("chunks completed with their last part: %d", n)
		}
	})

	t.Run("agent SIGKILL mid-chunk", func(t *testing.T) {
		const n = 6000
		before := p.served(t)
		b := p.submit(t, n, "sim-model", "24h")
		p.waitDone(t, b.ID, 1500)
		p.agents[0].Kill()
		defer func() {
			p.agents[0].Restart(t)
			p.WaitAgents(t, 3)
		}()
		done := p.waitStatus(t, b.ID, openai.BatchStatusCompleted, 3*time.Minute)
		p.exactlyOnce(t, done, n)
		// Only lines the dead agent ran but had not committed may run twice,
		// per lease it held: the part being committed, what finished while
		// that commit was in flight (a loaded machine slows commits, so
		// allow another part's worth), and the requests in flight.
		extra := p.served(t) - before - n
		if bound := int64(2 * (2*100 + 16)); extra < 0 || extra > bound {
			t.Fatalf("engines served %d requests beyond the %d lines (bound %d): committed work ran again", extra, n, bound)
		}
		t.Logf("re-run after SIGKILL: %d requests", extra)
	})

	t.Run("agent SIGSTOP past lease TTL", func(t *testing.T) {
		const n = 6000
		refusedBefore := p.staleRefused(t)
		b := p.submit(t, n, "sim-model", "24h")
		p.waitDone(t, b.ID, 1500)
		if err := p.agents[1].Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resumed := false
		defer func() {
			if !resumed {
				_ = p.agents[1].Signal(syscall.SIGCONT)
			}
		}()
		// Past the lease TTL and gossip's failure detection, the chunks move
		// to the other agent.
		p.waitDone(t, b.ID, 3000)
		time.Sleep(leaseTTL) // the frozen agent must stay frozen past its TTL
		if err := p.agents[1].Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		resumed = true
		done := p.waitStatus(t, b.ID, openai.BatchStatusCompleted, 3*time.Minute)
		p.exactlyOnce(t, done, n)
		t.Logf("stale results refused during the freeze: %d", p.staleRefused(t)-refusedBefore)
		p.WaitAgents(t, 3)
	})

	t.Run("cancel mid-batch", func(t *testing.T) {
		const n = 8000
		b := p.submit(t, n, "sim-model", "24h")
		p.waitDone(t, b.ID, 1000)
		cl := p.client(p.Running(-1)[0], "")
		cb, err := cl.Batches.Cancel(context.Background(), b.ID)
		if err != nil {
			t.Fatalf("cancel: %v", err)
		}
		if cb.Status != openai.BatchStatusCancelling && cb.Status != openai.BatchStatusCancelled {
			t.Fatalf("cancel answered status %s", cb.Status)
		}
		done := p.waitStatus(t, b.ID, openai.BatchStatusCancelled, time.Minute)
		got := done.RequestCounts.Completed + done.RequestCounts.Failed
		if got == 0 || got >= n || done.CancelledAt == 0 {
			t.Fatalf("cancelled batch counts %+v", done.RequestCounts)
		}
		out := lines(content(t, cl, done.OutputFileID))
		if int64(len(out)) != done.RequestCounts.Completed {
			t.Fatalf("partial output has %d lines, counts say %d", len(out), done.RequestCounts.Completed)
		}
	})

	t.Run("drain and undrain", func(t *testing.T) {
		// vbctl drains both agents of sim-model: a batch for it gets no
		// lease; undrained, they take it up without a restart.
		vbctl := func(args ...string) string {
			t.Helper()
			full := append([]string{"--addr", p.Coords[p.Running(-1)[0]].URL()}, args...)
			out, err := exec.Command(filepath.Join(Binaries(t), "vbctl"), full...).CombinedOutput()
			if err != nil {
				t.Fatalf("vbctl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		for _, id := range []string{"agent1", "agent2"} {
			vbctl("agents", "drain", id, "--wait", "--poll", "50ms")
		}
		const n = 500
		b := p.submit(t, n, "sim-model", "24h")
		p.waitStatus(t, b.ID, openai.BatchStatusInProgress, time.Minute)
		list := vbctl("agents", "list", "-o", "json")
		cl := p.client(p.Running(-1)[0], "")
		now, err := cl.Batches.Get(context.Background(), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got := now.RequestCounts.Completed + now.RequestCounts.Failed; got != 0 {
			t.Fatalf("drained agents ran %d requests", got)
		}
		var agents struct {
			Data []struct {
				ID    string `json:"id"`
				State string `json:"state"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(list), &agents); err != nil {
			t.Fatalf("agents list: %v\n%s", err, list)
		}
		for _, a := range agents.Data {
			if (a.ID == "agent1" || a.ID == "agent2") != (a.State == "draining") {
				t.Fatalf("agent %s is %s while agent1 and agent2 are drained", a.ID, a.State)
			}
		}
		for _, id := range []string{"agent1", "agent2"} {
			if out := vbctl("agents", "undrain", id); !strings.Contains(out, "Undrained "+id) {
				t.Fatalf("vbctl agents undrain %s: %q", id, out)
			}
		}
		done := p.waitStatus(t, b.ID, openai.BatchStatusCompleted, 2*time.Minute)
		p.exactlyOnce(t, done, n)
	})

	t.Run("online chat", func(t *testing.T) {
		cl := p.client(p.Running(-1)[1], "")
		ctx := context.Background()
		params := openai.ChatCompletionNewParams{
			Model:    "sim-model",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello there")},
		}
		res, err := cl.Chat.Completions.New(ctx, params)
		if err != nil {
			t.Fatalf("chat: %v", err)
		}
		if len(res.Choices) == 0 || res.Choices[0].Message.Content == "" || res.Usage.TotalTokens == 0 {
			t.Fatalf("chat answer = %+v", res)
		}
		stream := cl.Chat.Completions.NewStreaming(ctx, params)
		var text strings.Builder
		chunks := 0
		for stream.Next() {
			chunks++
			for _, ch := range stream.Current().Choices {
				text.WriteString(ch.Delta.Content)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if chunks < 2 || text.String() != res.Choices[0].Message.Content {
			t.Fatalf("stream gave %d chunks %q, plain gave %q", chunks, text.String(), res.Choices[0].Message.Content)
		}
		_, err = cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "no-such-model", Messages: params.Messages,
		})
		var apiErr *openai.Error
		if !errorsAs(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("unserved model: %v", err)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		done := p.waitStatus(t, expiring.ID, openai.BatchStatusExpired, 2*time.Minute)
		_, errs := p.exactlyOnce(t, done, 300)
		allExpired(t, errs)
		if done.RequestCounts.Failed != 300 || done.ExpiredAt == 0 {
			t.Fatalf("expired batch = %+v", done.RequestCounts)
		}
	})

	t.Run("busy expiry", func(t *testing.T) {
		done := p.waitStatus(t, busy.ID, openai.BatchStatusExpired, 2*time.Minute)
		out, errs := p.exactlyOnce(t, done, 6000)
		allExpired(t, errs)
		// Past its window the batch takes no more leases and its leases
		// end: it expires within seconds, with work left undone.
		late := done.ExpiredAt - done.ExpiresAt
		t.Logf("busy batch expired %d s after its window with %d answered, %d batch_expired", late, len(out), len(errs))
		if late > 20 || len(out) == 0 || len(errs) == 0 {
			t.Fatalf("busy batch expired %d s late with %d answered and %d expired lines", late, len(out), len(errs))
		}
	})
}

// TestVLLMEngineSupervision runs an agent with the vllm engine against a
// stand-in `vllm` executable that starts `vbatch sim`, and kills it.
func TestVLLMEngineSupervision(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	c := StartCluster(t, 3, ClusterOptions{})
	script, pidFile := standInVLLM(t, c.Bin, "--latency", "1ms")
	c.StartAgent(t, "gpu1", "--engine", "vllm", "--vllm-bin", script)
	cl := c.client(0, "")
	chat := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "sim-model", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		return err
	}
	WaitFor(t, 60*time.Second, "online chat through the supervised engine", func() bool { return chat() == nil })
	first := readPID(t, pidFile)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatalf("kill stand-in vllm %d: %v", first, err)
	}
	WaitFor(t, 60*time.Second, "the engine restarted", func() bool {
		pid, err := pidOf(pidFile)
		return err == nil && pid != first && chat() == nil
	})
}

// standInVLLM writes a stand-in `vllm` executable that answers `vllm
// serve MODEL --host H --port P [args...]` by exec'ing `vbatch sim` there
// with simArgs, writing its pid to the returned pid file first.
func standInVLLM(t *testing.T, bin string, simArgs ...string) (script, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	pidFile = filepath.Join(dir, "vllm.pid")
	script = filepath.Join(dir, "vllm")
	quoted := make([]string, len(simArgs))
	for i, a := range simArgs {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	body := fmt.Sprintf(`#!/bin/sh
[ "$1" = serve ] || exit 2
model=$2; shift 2
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=$2; shift 2;;
    --port) port=$2; shift 2;;
    --api-key) key=$2; shift 2;;
    *) shift;;
  esac
done
echo $$ > %s
exec %s sim --addr "$host:$port" --model "$model" --api-key "$key" %s
`, pidFile, bin, strings.Join(quoted, " "))
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, pidFile
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	WaitFor(t, 30*time.Second, "stand-in pid file", func() bool {
		var err error
		pid, err = pidOf(path)
		return err == nil
	})
	return pid
}

func pidOf(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
