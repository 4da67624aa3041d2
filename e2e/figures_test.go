package e2e

// Measurements for docs/reliability.md that are not part of `make test`:
// how fast a dead agent's chunks are leased again, stale lease holders over
// many SIGSTOP/SIGCONT trials, and quiet (no spurious elections or agent
// deaths) under full CPU load. They report figures; they assert only
// correctness (exactly once, no stale result accepted), never timings.

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	deadAgentTrials  = flag.Int("deadagent.trials", 30, "BenchmarkDeadAgent: agents killed")
	deadAgentLogs    = flag.Bool("deadagent.logs", false, "BenchmarkDeadAgent: print the coordinators' log lines about the victim of each slow trial")
	staleTrials      = flag.Int("stale.trials", 100, "BenchmarkStaleLease: SIGSTOP/SIGCONT trials")
	quietLoadMinutes = flag.Duration("quiet.duration", 0, "TestQuietUnderLoad: how long to load the CPUs (0 skips)")
)

// agentLeases returns the live leases of every agent the cluster lists.
func agentLeases(hc *http.Client, base string) (map[string]int, error) {
	resp, err := hc.Get(base + "/v1/admin/agents")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data []struct {
			ID         string `json:"id"`
			State      string `json:"state"`
			LiveLeases int    `json:"live_leases"`
		} `json:"data"`
	}
	if err := decodeBody(resp, &body); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, a := range body.Data {
		if a.State == "alive" || a.LiveLeases > 0 {
			out[a.ID] = a.LiveLeases
		}
	}
	return out, nil
}

// percentiles reports p50, p99 and max of d, in milliseconds, on b.
func percentiles(b *testing.B, what string, d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	pct := func(p float64) time.Duration { return d[int(p*float64(len(d)-1)+0.5)] }
	b.ReportMetric(float64(pct(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(pct(0.99).Milliseconds()), "p99-ms")
	b.ReportMetric(float64(d[len(d)-1].Milliseconds()), "max-ms")
	b.Logf("%s", describe(what, d))
}

// describe summarizes durations: p50, p99, min and max.
func describe(what string, d []time.Duration) string {
	d = slices.Clone(d)
	slices.Sort(d)
	pct := func(p float64) time.Duration { return d[int(p*float64(len(d)-1)+0.5)] }
	return fmt.Sprintf("%s over %d trials: p50 %s p99 %s min %s max %s", what, len(d), pct(0.5), pct(0.99), d[0], d[len(d)-1])
}

// BenchmarkDeadAgent: from SIGKILL of an agent holding two leases to both
// chunks leased again by an agent with room for them. Each trial runs a
// fresh two-chunk batch on a slow simulator so nothing finishes meanwhile.
func BenchmarkDeadAgent(b *testing.B) {
	extra := []string{"--chunk-size", "20"}
	if *deadAgentLogs {
		extra = append(extra, "--log-level", "debug")
	}
	cl := StartCluster(b, 3, ClusterOptions{Extra: extra})
	sim := cl.StartSim(b, "sim", "--latency", "30s")
	base := cl.Coords[0].URL()
	var took, freedIn []time.Duration
	b.ResetTimer()
	for trial := 0; trial < *deadAgentTrials; trial++ {
		fileID, err := chaosUpload(base, "dead.jsonl", chaosLines(fmt.Sprintf("dead%d", trial), 40))
		if err != nil {
			b.Fatal(err)
		}
		batch, err := chaosCreateBatch(base, fileID)
		if err != nil {
			b.Fatal(err)
		}
		victim := cl.StartAgent(b, fmt.Sprintf("victim%d", trial), "--engine", "openai", "--engine-url", "http://"+sim.Addr, "--max-leases", "2")
		WaitFor(b, 30*time.Second, "the victim holding both chunks", func() bool {
			l, err := agentLeases(chaosHTTP, base)
			return err == nil && l[victim.ID] == 2
		})
		heir := cl.StartAgent(b, fmt.Sprintf("heir%d", trial), "--engine", "openai", "--engine-url", "http://"+sim.Addr, "--max-leases", "2")
		cl.WaitAgents(b, 2)
		killed := time.Now()
		victim.Kill()
		var freed time.Duration
		for {
			l, err := agentLeases(chaosHTTP, base)
			if err == nil && l[victim.ID] == 0 && freed == 0 {
				freed = time.Since(killed)
			}
			if err == nil && l[heir.ID] == 2 {
				break
			}
			if time.Since(killed) > 60*time.Second {
				b.Fatalf("trial %d: chunks not leased again within 60s\n%s", trial, cl.Logs())
			}
			time.Sleep(5 * time.Millisecond)
		}
		took = append(took, time.Since(killed))
		freedIn = append(freedIn, freed)
		if took[len(took)-1] > time.Second {
			b.Logf("trial %d slow: victim's leases expired after %s, heir held both after %s", trial, freed, took[len(took)-1])
			if *deadAgentLogs {
				// Straight to stderr: a benchmark's own log is cut short.
				for _, co := range cl.Coords {
					for _, line := range strings.Split(co.Log(), "\n") {
						if strings.Contains(line, victim.ID) {
							fmt.Fprintf(os.Stderr, "trial %d %s: %s\n", trial, co.ID, line)
						}
					}
				}
			}
		}
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/batches/"+batch.ID+"/cancel", nil)
		if resp, err := chaosHTTP.Do(req); err == nil {
			resp.Body.Close()
		}
		heir.Stop(10 * time.Second)
		WaitFor(b, 60*time.Second, "the batch cancelled", func() bool {
			bt, err := chaosGetBatch(base, batch.ID)
			return err == nil && terminal(bt.Status)
		})
	}
	b.StopTimer()
	b.Logf("%s", describe("dead agent to its leases expired", freedIn))
	percentiles(b, "dead agent to chunks leased again", took)
}

// BenchmarkStaleLease freezes an agent that holds leases past their TTL,
// again and again, while one long batch runs on three agents; the batch
// must complete with every request exactly once, so no result of a stale
// lease was accepted, and the refusals are counted.
func BenchmarkStaleLease(b *testing.B) {
	const ttl = 1 * time.Second
	cl := StartCluster(b, 3, ClusterOptions{Extra: []string{"--lease-ttl", ttl.String(), "--chunk-size", "50"}})
	cc := &chaosCluster{Cluster: cl, banked: make([]int64, 3)}
	for i := 1; i <= 3; i++ {
		s := cl.StartSim(b, fmt.Sprintf("sim%d", i), "--latency", "200ms")
		cc.sims = append(cc.sims, s)
		cc.agents = append(cc.agents, cl.StartAgent(b, fmt.Sprintf("agent%d", i),
			"--engine", "openai", "--engine-url", "http://"+s.Addr, "--concurrency", "4", "--part-lines", "10", "--part-interval", "100ms"))
	}
	cl.WaitAgents(b, 3)
	base := cl.Coords[0].URL()
	n := 100 * *staleTrials
	input := chaosLines("stale", n)
	fileID, err := chaosUpload(base, "stale.jsonl", input)
	if err != nil {
		b.Fatal(err)
	}
	batch, err := chaosCreateBatch(base, fileID)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	trials := 0
	for trial := 0; trial < *staleTrials; trial++ {
		a := cc.agents[trial%3]
		l, err := agentLeases(chaosHTTP, base)
		if err != nil || l[a.ID] == 0 {
			// Wait for it to hold a lease, unless the batch is done.
			bt, err := chaosGetBatch(base, batch.ID)
			if err == nil && terminal(bt.Status) {
				break
			}
			time.Sleep(50 * time.Millisecond)
			trial--
			continue
		}
		if err := a.Signal(syscall.SIGSTOP); err != nil {
			b.Fatal(err)
		}
		time.Sleep(ttl + 500*time.Millisecond)
		if err := a.Signal(syscall.SIGCONT); err != nil {
			b.Fatal(err)
		}
		trials++
	}
	WaitFor(b, 5*time.Minute, "the batch completed", func() bool {
		bt, err := chaosGetBatch(base, batch.ID)
		return err == nil && bt.Status == "completed"
	})
	b.StopTimer()
	bt, err := chaosGetBatch(base, batch.ID)
	if err != nil {
		b.Fatal(err)
	}
	iv := &invariants{}
	checkExactlyOnce(cc, iv, &trackedBatch{ID: batch.ID, FileID: fileID, Prefix: "stale", Lines: n, Last: bt})
	if iv.total() != 0 {
		b.Fatalf("%d invariant violations: %v", iv.total(), iv)
	}
	refused := cc.staleTotal()
	b.ReportMetric(float64(trials), "trials")
	b.ReportMetric(float64(refused), "stale-refused")
	b.Logf("%d SIGSTOP/SIGCONT trials past the %s TTL: batch of %d completed exactly once (%d ok, %d failed); %d stale results refused, 0 accepted",
		trials, ttl, n, bt.RequestCounts.Completed, bt.RequestCounts.Failed, refused)
}

// TestQuietUnderLoad runs a cluster with three agents and a stream of
// batches while two busy loops hold both cores, for -quiet.duration, and
// counts raft elections (term changes) and agents ever reported not alive.
// Both must be zero: the timeouts must not mistake load for failure.
func TestQuietUnderLoad(t *testing.T) {
	if *quietLoadMinutes <= 0 {
		t.Skip("set -quiet.duration (make quiet) to run")
	}
	cc := startChaosCluster(t)
	base := cc.Coords[0].URL()
	terms := func() map[string]uint64 {
		out := map[string]uint64{}
		resp, err := chaosHTTP.Get(base + "/v1/admin/cluster/status")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var st struct {
			Servers []struct {
				ID   string `json:"id"`
				Term uint64 `json:"term"`
			} `json:"servers"`
		}
		if json.NewDecoder(resp.Body).Decode(&st) != nil {
			return nil
		}
		for _, s := range st.Servers {
			out[s.ID] = s.Term
		}
		return out
	}
	start := terms()
	var burners []*exec.Cmd
	for range 2 {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		burners = append(burners, cmd)
	}
	defer func() {
		for _, c := range burners {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	deadline := time.Now().Add(*quietLoadMinutes)
	deaths, batches := 0, 0
	for time.Now().Before(deadline) {
		fileID, err := chaosUpload(base, "quiet.jsonl", chaosLines(fmt.Sprintf("q%d", batches), 2000))
		if err != nil {
			t.Fatalf("upload under load: %v", err)
		}
		b, err := chaosCreateBatch(base, fileID)
		if err != nil {
			t.Fatalf("batch under load: %v", err)
		}
		batches++
		for {
			if l, err := agentLeases(chaosHTTP, base); err == nil && len(l) < 3 {
				deaths++
				t.Errorf("an agent was reported not alive under load: %v", l)
			}
			bt, err := chaosGetBatch(base, b.ID)
			if err == nil && terminal(bt.Status) {
				break
			}
			time.Sleep(time.Second)
		}
	}
	end := terms()
	elections := 0
	for id, t0 := range start {
		if end[id] != t0 {
			elections++
			t.Errorf("%s: raft term moved from %d to %d under load", id, t0, end[id])
		}
	}
	t.Logf("%s of full CPU load: %d batches, %d term changes, %d agent deaths seen", *quietLoadMinutes, batches, elections, deaths)
}
