package e2e

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// procStatusKB reads a "Name: N kB" field of /proc/PID/status.
func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// cpuSeconds is a process's user+system CPU time from /proc/PID/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// ddBaseline is the machine's plain write speed into dir, in MB/s: the
// median of three `dd if=src bs=1M conv=fsync` copies. Copying the upload's
// own content rather than /dev/zero matters on virtual disks, whose hosts
// may write runs of zeros at memory speed.
func ddBaseline(b *testing.B, dir, src string) float64 {
	st, err := os.Stat(src)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "dd.bin")
	var runs []float64
	for range 3 {
		start := time.Now()
		out, err := exec.Command("dd", "if="+src, "of="+path, "bs=1M", "conv=fsync").CombinedOutput()
		if err != nil {
			b.Fatalf("dd: %v: %s", err, out)
		}
		runs = append(runs, float64(st.Size())/1e6/time.Since(start).Seconds())
		os.Remove(path)
	}
	slices.Sort(runs)
	return runs[1]
}

// BenchmarkUpload200MB uploads a 200 MB, 100,000-line JSONL file through a
// follower and waits until it is replicated, validated and chunked (the
// batch is in_progress). It reports MB/s end to end, the ratio to dd's
// fsync'd write speed measured in the same run, and the follower's peak
// RSS above its idle RSS. nodes=3 is the figure the project targets;
// nodes=1 (no replication) shows what one coordinator's own pipeline
// costs, since here all three share one machine's cores and disk.
func BenchmarkUpload200MB(b *testing.B) {
	for _, n := range []int{3, 1} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchUpload(b, n) })
	}
}

var uploadProfile = flag.String("upload.profile", "", "BenchmarkUpload200MB: write each coordinator's 3 s CPU profile of the first upload into this directory")

func benchUpload(b *testing.B, nodes int) {
	c := StartCluster(b, nodes, ClusterOptions{Extra: []string{"--max-requests", "100000"}})
	leader := c.WaitLeader(20 * time.Second)
	fol := leader
	if others := c.Running(leader); len(others) > 0 {
		fol = others[0]
	}
	// 100,000 lines of 2,000 bytes: exactly 200 MB.
	input := filepath.Join(c.Dir, "big.jsonl")
	f, err := os.Create(input)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := 0; i < 100000; i++ {
		head := fmt.Sprintf(`{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"`, i)
		tail := `"}]}}`
		w.WriteString(head)
		w.WriteString(strings.Repeat("x", 2000-len(head)-len(tail)-1))
		w.WriteString(tail + "\n")
	}
	w.Flush()
	f.Close()
	st, _ := os.Stat(input)
	dd := ddBaseline(b, c.Dir, input)
	pid := c.Coords[fol].PID()
	idle := procStatusKB(pid, "VmRSS")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var profiled func()
		if *uploadProfile != "" && i == 0 {
			profiled = profileCoords(b, c, filepath.Join(*uploadProfile, fmt.Sprintf("nodes%d", nodes)), 3*time.Second)
		}
		start := time.Now()
		id := uploadStreaming(b, c.Coords[fol].URL(), input)
		cl := c.client(fol, "")
		bt, err := cl.Batches.New(context.Background(), openai.BatchNewParams{
			InputFileID: id, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: "24h",
		})
		if err != nil {
			b.Fatal(err)
		}
		waitBatch(b, cl, bt.ID, 5*time.Minute, statusIs(openai.BatchStatusInProgress))
		el := time.Since(start)
		mbps := float64(st.Size()) / 1e6 / el.Seconds()
		b.ReportMetric(mbps, "MB/s")
		b.ReportMetric(dd, "dd_MB/s")
		b.ReportMetric(mbps/dd, "ratio_to_dd")
		if profiled != nil {
			b.StopTimer()
			profiled()
			b.StartTimer()
		}
	}
	b.StopTimer()
	peak := procStatusKB(pid, "VmHWM")
	b.ReportMetric(float64(peak-idle)/1024, "peakRSS_MB_over_idle")
}

// uploadStreaming posts a file as multipart without holding it in memory.
func uploadStreaming(b *testing.B, base, path string) string {
	src, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		mw.WriteField("purpose", "batch")
		part, _ := mw.CreateFormFile("file", filepath.Base(path))
		_, err := io.Copy(part, src)
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	resp, err := http.Post(base+"/v1/files", mw.FormDataContentType(), pr)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	var obj struct {
		ID string `json:"id"`
	}
	if err := jsonUnmarshal(body, &obj); err != nil {
		b.Fatal(err)
	}
	return obj.ID
}

var pipelineCoordArgs = flag.String("pipeline.coord-args", "", "BenchmarkPipeline50k: extra coordinator flags, space-separated (e.g. \"--chunk-size 2000\"), to measure a setting's cost")

var pipelineProfile = flag.String("pipeline.profile", "", "BenchmarkPipeline50k: write each coordinator's CPU profile of the batch run into this directory")

// profileCoords fetches a CPU profile of the given length from every
// coordinator into dir/<id>.pb; the returned func waits for them.
func profileCoords(b *testing.B, c *Cluster, dir string, d time.Duration) func() {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, co := range c.Coords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", co.URL(), int(d.Seconds()))
			resp, err := c.httpc().Get(url)
			if err != nil {
				b.Errorf("profile %s: %v", co.ID, err)
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				b.Errorf("profile %s: %d %s", co.ID, resp.StatusCode, body)
				return
			}
			if err := os.WriteFile(filepath.Join(dir, co.ID+".pb"), body, 0o644); err != nil {
				b.Error(err)
			}
		}()
	}
	return wg.Wait
}

// BenchmarkPipeline50k runs a 50,000-request batch through three
// coordinators and two agents on sim engines, then drives the same sim
// engines directly with a minimal client at the same total concurrency,
// and reports the throughput ratio (vbatch / direct), the time from submit
// to completed, and the coordinators' CPU as a share of the agents'.
func BenchmarkPipeline50k(b *testing.B) {
	const n, perAgent = 50000, 64
	c := StartCluster(b, 3, ClusterOptions{Extra: append([]string{"--max-requests", "50000"}, strings.Fields(*pipelineCoordArgs)...)})
	var sims []*Sim
	var agents []*Agent
	for i := 1; i <= 2; i++ {
		s := c.StartSim(b, fmt.Sprintf("sim%d", i), "--latency", "20ms", "--max-num-seqs", "256")
		sims = append(sims, s)
		agents = append(agents, c.StartAgent(b, fmt.Sprintf("agent%d", i),
			"--engine", "openai", "--engine-url", "http://"+s.Addr, "--concurrency", strconv.Itoa(perAgent)))
	}
	c.WaitAgents(b, 2)
	data := chatLines(n, "sim-model")
	cl := c.client(0, "")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cpu := func(ps []*Proc) float64 {
			var t float64
			for _, p := range ps {
				t += cpuSeconds(p.PID())
			}
			return t
		}
		var coordProcs, agentProcs []*Proc
		for _, co := range c.Coords {
			coordProcs = append(coordProcs, co.Proc)
		}
		for _, a := range agents {
			agentProcs = append(agentProcs, a.Proc)
		}
		// What the cluster burns doing nothing (heartbeats, gossip,
		// telemetry, lease long-polls), to tell fixed cost from per-request.
		i0, idleStart := cpu(coordProcs), time.Now()
		time.Sleep(3 * time.Second)
		idleRate := (cpu(coordProcs) - i0) / time.Since(idleStart).Seconds()
		var simProcs []*Proc
		for _, s := range sims {
			simProcs = append(simProcs, s.Proc)
		}
		c0, a0, s0 := cpu(coordProcs), cpu(agentProcs), cpu(simProcs)
		profiled := func() {}
		if *pipelineProfile != "" {
			profiled = profileCoords(b, c, *pipelineProfile, 10*time.Second)
		}
		start := time.Now()
		f := upload(b, cl, "bench.jsonl", data)
		bt, err := cl.Batches.New(context.Background(), openai.BatchNewParams{
			InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: "24h",
		})
		if err != nil {
			b.Fatal(err)
		}
		// Phases, as the 50 ms polls see them: until the batch runs
		// (upload, validation, chunking), until every request is counted,
		// and from then until the batch is completed (finalization).
		var running, counted time.Time
		done := waitBatch(b, cl, bt.ID, 10*time.Minute, func(bt *openai.Batch) bool {
			now := time.Now()
			if running.IsZero() && bt.Status != openai.BatchStatusValidating {
				running = now
			}
			if rc := bt.RequestCounts; counted.IsZero() && rc.Total > 0 && rc.Completed+rc.Failed == rc.Total {
				counted = now
			}
			return bt.Status == openai.BatchStatusCompleted
		})
		vb := time.Since(start)
		if counted.IsZero() {
			counted = start.Add(vb)
		}
		if done.RequestCounts.Completed != n {
			b.Fatalf("completed %d of %d", done.RequestCounts.Completed, n)
		}
		coordCPU, agentCPU, simCPU := cpu(coordProcs)-c0, cpu(agentProcs)-a0, cpu(simProcs)-s0
		profiled()

		direct := directRun(b, sims, data, 2*perAgent)
		b.ReportMetric(float64(n)/vb.Seconds(), "vbatch_req/s")
		b.ReportMetric(float64(n)/direct.Seconds(), "direct_req/s")
		b.ReportMetric(direct.Seconds()/vb.Seconds(), "ratio")
		b.ReportMetric(vb.Seconds(), "submit_to_completed_s")
		b.ReportMetric(running.Sub(start).Seconds(), "submit_to_running_s")
		b.ReportMetric(start.Add(vb).Sub(counted).Seconds(), "counted_to_completed_s")
		b.ReportMetric(coordCPU/agentCPU, "coord_cpu_over_agent_cpu")
		b.ReportMetric(coordCPU, "coord_cpu_s")
		b.ReportMetric(agentCPU, "agent_cpu_s")
		b.ReportMetric(idleRate*vb.Seconds(), "coord_idle_cpu_s")
		// The engines' own CPU, for the share of whole agent hosts (agent
		// plus its engine); the target is stated against the agents.
		b.ReportMetric(simCPU, "engine_cpu_s")
		// Raft entries the batch cost, and how many of them were the
		// leader's commit notices (see coordinator/commitnotice.go).
		var notices, last float64
		for _, co := range c.Coords {
			m, err := scrapeUnlabeled(c.httpc(), co.URL(), map[string]bool{"vbatch_raft_commit_notices_total": true, "vbatch_raft_last_index": true})
			if err != nil {
				b.Fatalf("scrape %s: %v", co.ID, err)
			}
			notices += m["vbatch_raft_commit_notices_total"]
			last = max(last, m["vbatch_raft_last_index"])
		}
		b.ReportMetric(notices, "commit_notices")
		b.ReportMetric(last, "raft_last_index")
	}
}

// directRun sends every request body straight to the sims, spread evenly,
// with the given total concurrency, and returns the wall time.
func directRun(b *testing.B, sims []*Sim, data []byte, concurrency int) time.Duration {
	var bodies [][]byte
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		i := bytes.Index(line, []byte(`"body":`))
		bodies = append(bodies, line[i+len(`"body":`):len(line)-1])
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			url := "http://" + sims[w%len(sims)].Addr + "/v1/chat/completions"
			for {
				i := next.Add(1) - 1
				if i >= int64(len(bodies)) {
					return
				}
				resp, err := client.Post(url, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}(w)
	}
	wg.Wait()
	return time.Since(start)
}
