package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// linEnvDuration and linEnvUint read a flag's default from the
// environment, so `VBATCH_LIN_WINDOW=5m go test -run TestLinearizability`
// runs the long version without -args.
func linEnvDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

func linEnvUint(name string, def uint64) uint64 {
	if n, err := strconv.ParseUint(os.Getenv(name), 10, 64); err == nil {
		return n
	}
	return def
}

var (
	linSeed    = flag.Uint64("lin.seed", linEnvUint("VBATCH_LIN_SEED", 1), "seed of TestLinearizability's faults and clients (env VBATCH_LIN_SEED)")
	linWindow  = flag.Duration("lin.window", linEnvDuration("VBATCH_LIN_WINDOW", 30*time.Second), "how long TestLinearizability injects faults under load (env VBATCH_LIN_WINDOW)")
	linClients = flag.Int("lin.clients", 3, "concurrent HTTP clients of TestLinearizability")
	linWorkers = flag.Int("lin.workers", 3, "lease workers of TestLinearizability's agent")
)

// TestLinearizability records create, cancel and consistent reads of
// batches from concurrent HTTP clients, and lease grants, parts and
// completions from an agent speaking the real AgentService RPC, while
// coordinators are SIGKILLed, SIGSTOPped past the election timeout and
// restarted; then checks the history with porcupine against the batch
// state machine (linearize_model.go). Operations whose outcome is unknown
// enter the history as porcupine's "returns at the end of time".
//
// By default one 30s fault window with seed 1; VBATCH_LIN_WINDOW and
// VBATCH_LIN_SEED (or -lin.window, -lin.seed) run longer or other
// schedules. VBATCH_LIN_ARTIFACTS names a directory to keep the history's
// visualization in (it is always written on a violation).
func TestLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	seed, window := *linSeed, *linWindow
	t.Logf("seed %d, fault window %s, %d clients, %d lease workers", seed, window, *linClients, *linWorkers)
	cc := &chaosCluster{Cluster: StartCluster(t, 3, ClusterOptions{Extra: []string{
		"--lease-ttl", chaosLeaseTTL.String(), "--chunk-size", strconv.Itoa(linChunkSize),
	}}), banked: make([]int64, 3)}

	rec := newLinRecorder()
	t.Logf("history times are seconds since %s (UTC, as in the coordinators' logs)", rec.start.UTC().Format("15:04:05.000000"))
	agent := startLinAgent(t, cc, rec, "lin-agent")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var gossipAddrs []string
	for _, co := range cc.Coords {
		gossipAddrs = append(gossipAddrs, co.Gossip)
	}
	var agentWG sync.WaitGroup
	agentWG.Add(1)
	go func() { defer agentWG.Done(); agent.rejoin(ctx, gossipAddrs) }()
	// Client ids, as the visualization shows them: HTTP clients, then the
	// prober's readers, the lease workers, and the drain's listings.
	nc := *linClients
	prober := &linProber{firstID: nc, rec: rec, cc: cc, seed: seed}
	firstWorker := nc + prober.clients()
	for w := 0; w < *linWorkers; w++ {
		rng := rand.New(rand.NewPCG(seed, uint64(2000+w)))
		agentWG.Add(1)
		go func() { defer agentWG.Done(); agent.work(ctx, firstWorker+w, rng) }()
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	clients := make([]*linClient, nc)
	for i := range clients {
		clients[i] = &linClient{id: i, rec: rec, cc: cc, rng: rand.New(rand.NewPCG(seed, uint64(1000+i))), stop: stop, creates: map[linResult]int{}}
		wg.Add(1)
		go func() { defer wg.Done(); clients[i].run() }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); prober.run(stop) }()

	in := &linInjector{injector: &injector{t: t, cc: cc, rng: rand.New(rand.NewPCG(seed, 0)), start: time.Now()}, rec: rec, prober: prober}
	for {
		gap := in.between(time.Second, 3*time.Second)
		if time.Since(in.start)+gap >= window {
			break
		}
		time.Sleep(gap)
		in.inject()
	}
	if cc.waitLeader(30*time.Second) < 0 {
		t.Fatalf("no leader after the faults healed\n%s", cc.Logs())
	}
	close(stop)
	wg.Wait()

	// Drain: the agent finishes what is left; consistent listings (reads
	// in the history too) watch every batch reach a terminal status.
	drainClient := firstWorker + *linWorkers
	lister := cc.Coords[cc.waitLeader(10*time.Second)]
	var final []linBatch
	deadline := time.Now().Add(60 * time.Second)
	for {
		all, err := rec.listAll(ctx, drainClient, lister)
		if err == nil {
			final = all
			if linAllTerminal(all) || time.Now().After(deadline) {
				break
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("final listing: %v\n%s", err, cc.Logs())
		}
		time.Sleep(300 * time.Millisecond)
	}
	cancel()
	agentWG.Wait()

	keyOf := map[string]string{}
	byKey := map[string]string{}
	for _, b := range final {
		key := b.Metadata[linMetaKey]
		if other, dup := byKey[key]; dup {
			t.Errorf("key %s names two batches, %s and %s: a create took effect twice", key, other, b.ID)
		}
		byKey[key], keyOf[b.ID] = b.ID, key
		if !linTerminal(b.Status) {
			t.Errorf("batch %s (key %s) still %s 60s after the faults healed", b.ID, key, b.Status)
		}
	}
	rec.mu.Lock()
	ops := append([]linOp(nil), rec.ops...)
	ambiguousLeases := rec.ambiguousLeases
	rec.mu.Unlock()
	hist, err := linHistory(ops, keyOf)
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	unknown := 0
	for _, op := range ops {
		if op.Out.Result == resUnknown {
			unknown++
		}
	}
	for _, f := range in.faults {
		t.Logf("fault at %7.3fs: %-22s %-9s held %s", float64(f.Start)/1e9, f.Kind, f.Target, time.Duration(f.End-f.Start).Round(time.Millisecond))
	}
	var refused []string
	for _, c := range clients {
		if n := c.creates[resRefused] + c.creates[resConflict] + c.creates[resNotFound]; n > 0 {
			refused = append(refused, fmt.Sprintf("client %d: %d", c.id, n))
		}
	}
	if len(refused) > 0 {
		t.Errorf("creates of valid input over acknowledged uploads were refused: %s", strings.Join(refused, ", "))
	}
	t.Logf("recorded %d operations on %d batches (%d with unknown outcome; %d Lease calls with unknown outcome name no batch), %d lease stalls past the TTL",
		len(ops), len(final), unknown, ambiguousLeases, agent.stalls)
	t.Logf("operations: %s", linTally(ops))

	dir := os.Getenv("VBATCH_LIN_ARTIFACTS")
	keep := dir != ""
	if !keep {
		dir = t.TempDir()
	}
	if keep {
		if err := linKeep(dir, ops, cc); err != nil {
			t.Errorf("keep artifacts: %v", err)
		}
	}
	v, err := linCheck(hist, in.faults, drainClient+1, 2*time.Minute, dir, keep)
	if err != nil {
		t.Errorf("check: %v", err)
	}
	t.Logf("porcupine: %s in %s over %d operations", v.Result, v.Took.Round(time.Millisecond), len(hist))
	if v.Visualization != "" {
		t.Logf("visualization: %s", v.Visualization)
	}
	switch v.Result {
	case porcupine.Illegal:
		for _, p := range v.Illegal {
			t.Errorf("not linearizable:\n%s", p)
		}
		if !keep {
			t.Logf("set VBATCH_LIN_ARTIFACTS to keep the visualization after the test")
		}
	case porcupine.Unknown:
		t.Errorf("porcupine could not decide within its timeout")
	}
	linCheckOutputs(t, cc, ops, final)
}

func linAllTerminal(all []linBatch) bool {
	for _, b := range all {
		if !linTerminal(b.Status) {
			return false
		}
	}
	return true
}

// linCheckOutputs reads the output file of every completed batch and
// checks it holds each input custom_id exactly once: the agent's parts,
// committed under faults, make a well-formed result.
func linCheckOutputs(t *testing.T, cc *chaosCluster, ops []linOp, final []linBatch) {
	t.Helper()
	lines := map[string]int64{}
	for _, op := range ops {
		if op.In.Kind == linCreate {
			lines[op.In.Key] = op.In.Lines
		}
	}
	base := cc.Coords[cc.Running(-1)[0]].URL()
	for _, b := range final {
		if b.Status != "completed" {
			continue
		}
		key := b.Metadata[linMetaKey]
		data, err := chaosContentSettled(base, b.OutputFileID)
		if err != nil {
			t.Errorf("batch %s: %v", b.ID, err)
			continue
		}
		seen := map[string]int{}
		for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			var v struct {
				CustomID string `json:"custom_id"`
				Response struct {
					StatusCode int `json:"status_code"`
				} `json:"response"`
			}
			if err := json.Unmarshal([]byte(l), &v); err != nil || v.Response.StatusCode != 200 {
				t.Errorf("batch %s: output line %.100q is not a 200 response (%v)", b.ID, l, err)
				break
			}
			seen[v.CustomID]++
		}
		for i := int64(0); i < lines[key]; i++ {
			id := fmt.Sprintf("%s-%d", key, i)
			if seen[id] != 1 {
				t.Errorf("batch %s: %s appears %d times in the output", b.ID, id, seen[id])
			}
			delete(seen, id)
		}
		for id, n := range seen {
			t.Errorf("batch %s: unknown custom_id %s appears %d times", b.ID, id, n)
		}
	}
}
