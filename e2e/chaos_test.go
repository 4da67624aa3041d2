package e2e

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

var (
	chaosSchedules = flag.Int("chaos.schedules", 1, "chaos schedules TestChaos runs")
	chaosSeed      = flag.Uint64("chaos.seed", 1, "seed of the first chaos schedule; schedule i uses seed+i")
	chaosWindow    = flag.Duration("chaos.window", 20*time.Second, "how long each schedule injects faults under load")
	chaosBound     = flag.Duration("chaos.bound", 2*time.Minute, "how soon after the faults heal every batch must be terminal")
	chaosClients   = flag.Int("chaos.clients", 3, "concurrent clients per schedule")
	failoverTrials = flag.Int("failover.trials", 30, "leader kills BenchmarkFailover measures")
	failoverFlags  = flag.String("failover.flags", "", "extra coordinator flags for BenchmarkFailover, e.g. \"--raft-heartbeat-timeout 250ms\"")
)

// scheduleResult is one row of the chaos table.
type scheduleResult struct {
	Seed          uint64
	Faults        []fault
	Batches       int
	Lines         int
	Uploads       int
	ClientErrors  int
	Inv           *invariants
	Stale         int64
	Window, Drain time.Duration
}

// TestChaos runs seeded fault schedules against a cluster under load and
// checks the invariants. By default it runs one short schedule with a fixed
// seed; `make chaos SCHEDULES=N SEED=S` runs more.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	var results []scheduleResult
	for i := 0; i < *chaosSchedules; i++ {
		seed := *chaosSeed + uint64(i)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := runSchedule(t, seed)
			results = append(results, r)
			// One row per schedule as it ends, so a run cut short still
			// shows every schedule it finished.
			t.Logf("row: %s", strings.ReplaceAll(chaosRow(r), "\t", " | "))
			for _, v := range [][]string{r.Inv.ExactlyOnce, r.Inv.Uploads, r.Inv.Monotonic, r.Inv.Terminal} {
				for _, s := range v {
					t.Errorf("seed %d: %s", seed, s)
				}
			}
		})
	}
	printChaosTable(results)
}

// runSchedule runs one schedule: start a cluster, run clients while the
// seeded injector delivers faults for the window, heal, drain and check.
func runSchedule(t *testing.T, seed uint64) scheduleResult {
	cc := startChaosCluster(t)
	h := newHistory()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < *chaosClients; c++ {
		rng := rand.New(rand.NewPCG(seed, uint64(1000+c)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			chaosClient(cc, h, rng, fmt.Sprintf("s%dc%d", seed, c), stop)
		}()
	}
	in := &injector{t: t, cc: cc, rng: rand.New(rand.NewPCG(seed, 0)), start: time.Now()}
	for {
		gap := in.between(500*time.Millisecond, 3*time.Second)
		if time.Since(in.start)+gap >= *chaosWindow {
			break
		}
		time.Sleep(gap)
		in.inject()
	}
	window := time.Since(in.start)
	// Heal: every process runs (the injector restarts what it kills and
	// continues what it stops), so wait for one leader and the agents.
	if cc.waitLeader(30*time.Second) < 0 {
		t.Fatalf("seed %d: no leader after the faults healed\n%s", seed, cc.Logs())
	}
	cc.WaitAgents(t, 3)
	close(stop)
	wg.Wait()
	healed := time.Now()
	drain(cc, h, healed.Add(*chaosBound))
	r := scheduleResult{Seed: seed, Faults: in.log, Window: window, Drain: time.Since(healed)}
	r.Inv = check(cc, h)
	r.Stale = cc.staleTotal()
	var merged, resumed float64
	lostRemoved := 0
	for i, co := range cc.Coords {
		want := map[string]bool{"vbatch_files_merged_total": true, "vbatch_leases_resumed_total": true}
		if m, err := scrapeUnlabeled(chaosHTTP, cc.Coords[i].URL(), want); err == nil {
			merged += m["vbatch_files_merged_total"]
			resumed += m["vbatch_leases_resumed_total"]
		}
		// Logs append across restarts: this count is exact.
		lostRemoved += strings.Count(co.Log(), "removing coordinator from raft: it restarted without")
	}
	// Lower bounds: a coordinator's counters start again when it restarts.
	t.Logf("result files merged under the faults (counters of the coordinators now running): %.0f; lost lease answers given again: %.0f; wiped voters the leaders removed to rejoin (logs): %d",
		merged, resumed, lostRemoved)
	h.mu.Lock()
	r.Batches, r.Uploads, r.ClientErrors, r.Lines = len(h.batches), len(h.uploads), h.errs, r.Inv.Lines
	h.mu.Unlock()
	for _, f := range in.log {
		t.Logf("fault at %6s: %-22s %-9s held %s", f.At.Round(time.Millisecond), f.Kind, f.Target, f.Held.Round(time.Millisecond))
	}
	if r.Inv.total() > 0 {
		t.Logf("logs on violation:\n%s", cc.Logs())
	}
	return r
}

// printChaosTable writes one row per schedule to stdout.
func printChaosTable(results []scheduleResult) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SEED\tFAULTS\tKINDS\tBATCHES\tLINES\tUPLOADS\tCLIENT_ERRS\tEXACTLY_ONCE\tUPLOAD_SHA\tMONOTONIC\tTERMINAL\tSTALE_REFUSED\tENGINE_CRASHED\tWINDOW\tDRAIN")
	for _, r := range results {
		fmt.Fprintln(w, chaosRow(r))
	}
	w.Flush()
}

// chaosRow formats one schedule's result as tab-separated table cells.
func chaosRow(r scheduleResult) string {
	verdict := func(v []string) string {
		if len(v) == 0 {
			return "ok"
		}
		return fmt.Sprintf("FAIL(%d)", len(v))
	}
	kinds := map[string]int{}
	for _, f := range r.Faults {
		kinds[f.Kind]++
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(ks)
	return fmt.Sprintf("%d\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s", r.Seed, len(r.Faults), strings.Join(ks, ","),
		r.Batches, r.Lines, r.Uploads, r.ClientErrors, verdict(r.Inv.ExactlyOnce), verdict(r.Inv.Uploads),
		verdict(r.Inv.Monotonic), verdict(r.Inv.Terminal), r.Stale, r.Inv.EngineCrashed, r.Window.Round(time.Second), r.Drain.Round(time.Second))
}

// BenchmarkFailover kills the leader failover.trials times and measures
// from SIGKILL to the first acknowledged upload through a survivor, then
// restarts the killed node and waits for the cluster to settle.
func BenchmarkFailover(b *testing.B) {
	extra := append([]string{"--lease-ttl", chaosLeaseTTL.String()}, strings.Fields(*failoverFlags)...)
	cc := &chaosCluster{Cluster: StartCluster(b, 3, ClusterOptions{Extra: extra}), banked: make([]int64, 3)}
	tiny := chaosLines("failover", 1)
	var took []time.Duration
	b.ResetTimer()
	for trial := 0; trial < *failoverTrials; trial++ {
		l := cc.waitLeader(30 * time.Second)
		if l < 0 {
			b.Fatalf("trial %d: no leader\n%s", trial, cc.Logs())
		}
		survivors := cc.Running(l)
		killed := time.Now()
		cc.Coords[l].Kill()
		for i := 0; ; i++ {
			if _, err := chaosUploadWithin(cc.Coords[survivors[i%len(survivors)]].URL(), tiny); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
			if time.Since(killed) > 30*time.Second {
				b.Fatalf("trial %d: no upload acknowledged 30s after killing %s\n%s", trial, cc.Coords[l].ID, cc.Logs())
			}
		}
		took = append(took, time.Since(killed))
		cc.Coords[l].Restart(b)
		cc.settle(b, l)
	}
	b.StopTimer()
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	pct := func(p float64) time.Duration { return took[int(p*float64(len(took)-1)+0.5)] }
	b.ReportMetric(float64(pct(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(pct(0.99).Milliseconds()), "p99-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(len(took)), "trials")
	b.Logf("failover over %d trials: p50 %s p99 %s min %s max %s", len(took), pct(0.5), pct(0.99), took[0], took[len(took)-1])
}

// chaosUploadWithin is one upload attempt with a short deadline, so that a
// request stuck on a dead leader does not inflate the measurement.
func chaosUploadWithin(base string, data []byte) (string, error) {
	return chaosUploadWith(failoverHTTP, base, "failover.jsonl", data)
}

var failoverHTTP = &http.Client{Timeout: 2 * time.Second}

// settle waits until every coordinator agrees on a leader and restarted
// coordinator r has applied as far as the leader had when it rejoined.
func (cc *chaosCluster) settle(t testing.TB, r int) {
	t.Helper()
	l := cc.WaitLeader(30 * time.Second)
	ls, err := cc.StatusOf(l)
	if err != nil {
		t.Fatalf("status of leader: %v", err)
	}
	var want uint64
	for _, s := range ls.Servers {
		if s.ID == cc.Coords[l].ID {
			want = s.LastIndex
		}
	}
	WaitFor(t, 30*time.Second, cc.Coords[r].ID+" caught up", func() bool {
		s, err := cc.StatusOf(r)
		if err != nil {
			return false
		}
		for _, sv := range s.Servers {
			if sv.ID == cc.Coords[r].ID {
				return sv.LastIndex >= want
			}
		}
		return false
	})
}

// TestChaosMonotonic checks that the status checker flags a batch moving
// backwards, a terminal status changing and request counts shrinking, and
// passes the order OpenAI statuses take.
func TestChaosMonotonic(t *testing.T) {
	seen := func(obs ...observation) *trackedBatch { return &trackedBatch{ID: "batch_x", Seen: obs} }
	cases := []struct {
		name string
		tb   *trackedBatch
		bad  int
	}{
		{"forward", seen(observation{Status: "validating"}, observation{Status: "in_progress", Done: 10},
			observation{Status: "in_progress", Done: 20}, observation{Status: "finalizing", Done: 30}, observation{Status: "completed", Done: 30}), 0},
		{"cancel", seen(observation{Status: "in_progress"}, observation{Status: "cancelling"}, observation{Status: "cancelled"}), 0},
		{"backwards", seen(observation{Status: "finalizing"}, observation{Status: "in_progress"}), 1},
		{"terminal changes", seen(observation{Status: "completed"}, observation{Status: "expired"}), 1},
		{"counts shrink", seen(observation{Status: "in_progress", Done: 50}, observation{Status: "in_progress", Done: 40}), 1},
	}
	for _, c := range cases {
		iv := &invariants{}
		checkMonotonic(iv, c.tb)
		if len(iv.Monotonic) != c.bad {
			t.Errorf("%s: %d violations %v, want %d", c.name, len(iv.Monotonic), iv.Monotonic, c.bad)
		}
	}
}
