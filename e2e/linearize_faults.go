package e2e

// The linearizability test's faults: a seeded schedule of SIGKILLs,
// SIGSTOPs and restarts of the coordinators, and a prober that storms the
// coordinators with consistent reads right after each one, when a new
// leader takes over.

import (
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// linProber issues consistent reads of known batches through every
// coordinator: one reader per coordinator reads every 100ms; after each
// coordinator fault, for two seconds, linBurstReaders readers per
// coordinator read back to back, each read giving up after 50ms, so that
// fresh reads keep arriving while a new leader takes over (when a leader
// that answers before it has caught up would show). Reader g of
// coordinator i is recorded as client firstID + i*linBurstReaders + g.
type linProber struct {
	firstID int
	rec     *linRecorder
	cc      *chaosCluster
	seed    uint64
	burst   atomic.Int64 // unix ns until which to read fast
}

// linBurstReaders is how many readers per coordinator a burst runs.
const linBurstReaders = 10

// kick starts a burst of reads.
func (p *linProber) kick() { p.burst.Store(time.Now().Add(2 * time.Second).UnixNano()) }

// clients is how many client ids the prober uses.
func (p *linProber) clients() int { return len(p.cc.Coords) * linBurstReaders }

// run reads until stop closes.
func (p *linProber) run(stop <-chan struct{}) {
	var wg sync.WaitGroup
	for i, co := range p.cc.Coords {
		for g := 0; g < linBurstReaders; g++ {
			client := p.firstID + i*linBurstReaders + g
			rng := rand.New(rand.NewPCG(p.seed, uint64(3000+client)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.reader(stop, co, client, g == 0, rng)
			}()
		}
	}
	wg.Wait()
}

// reader is one of the prober's readers; only a steady one reads outside
// bursts.
func (p *linProber) reader(stop <-chan struct{}, co *Coordinator, client int, steady bool, rng *rand.Rand) {
	gap := time.Duration(0)
	for {
		select {
		case <-stop:
			return
		case <-time.After(gap):
		}
		burst := time.Now().UnixNano() < p.burst.Load()
		hc := linHTTP
		switch {
		case burst:
			hc, gap = linBurstHTTP, 2*time.Millisecond
		case steady:
			gap = 100 * time.Millisecond
		default:
			gap = 20 * time.Millisecond
			continue
		}
		id := p.rec.randomKnown(rng, client)
		if id == "" {
			continue
		}
		if out := p.rec.read(hc, client, co, "", id); out.Result == resUnknown && burst && !strings.HasPrefix(out.Detail, "5") {
			// A dead coordinator refuses at once: no need to spin.
			gap = 20 * time.Millisecond
		}
	}
}

// linFaultKinds are the coordinator faults a run draws from, with weights.
var linFaultKinds = []struct {
	kind   string
	weight int
}{{"kill-leader", 3}, {"kill-follower", 2}, {"stop-leader", 3}, {"kill-all-coordinators", 1}}

// linInjector delivers one run's faults: real signals to the coordinator
// processes, drawn from the run's seed. Each fault heals (restart or
// SIGCONT) before the next; every change kicks the prober.
type linInjector struct {
	*injector
	rec    *linRecorder
	prober *linProber
	faults []linFault
	first  []string // the opening faults, every kind once
}

// next draws the next fault's kind: the first ones are every kind once,
// in a seeded order, so that even a short run has each; then by weight.
func (li *linInjector) next() string {
	if len(li.faults) == 0 {
		for _, i := range li.rng.Perm(len(linFaultKinds)) {
			li.first = append(li.first, linFaultKinds[i].kind)
		}
	}
	if len(li.faults) < len(li.first) {
		return li.first[len(li.faults)]
	}
	total := 0
	for _, k := range linFaultKinds {
		total += k.weight
	}
	n := li.rng.IntN(total)
	for _, k := range linFaultKinds {
		if n < k.weight {
			return k.kind
		}
		n -= k.weight
	}
	return ""
}

// inject draws and runs one fault, returning once its target runs again.
func (li *linInjector) inject() {
	li.t.Helper()
	kind := li.next()
	cc := li.cc
	l := cc.waitLeader(15 * time.Second)
	if l < 0 {
		li.t.Fatalf("no leader before %s\n%s", kind, cc.Logs())
	}
	var targets []*Coordinator
	switch kind {
	case "kill-leader", "stop-leader":
		targets = []*Coordinator{cc.Coords[l]}
	case "kill-follower":
		others := cc.Running(l)
		targets = []*Coordinator{cc.Coords[others[li.rng.IntN(len(others))]]}
	case "kill-all-coordinators":
		targets = cc.Coords
	}
	f := linFault{Kind: kind, Start: li.rec.now()}
	var names []string
	for _, co := range targets {
		names = append(names, co.ID)
	}
	f.Target = strings.Join(names, ",")
	var held time.Duration
	if kind == "stop-leader" {
		// Past the election timeout, and at times past the lease TTL.
		held = li.between(2*chaosElection, chaosLeaseTTL+time.Second)
		if err := targets[0].Signal(syscall.SIGSTOP); err != nil {
			li.t.Fatalf("SIGSTOP %s: %v", targets[0].ID, err)
		}
		li.prober.kick()
		time.Sleep(held)
		if err := targets[0].Signal(syscall.SIGCONT); err != nil {
			li.t.Fatalf("SIGCONT %s: %v", targets[0].ID, err)
		}
	} else {
		held = li.between(200*time.Millisecond, 3*time.Second)
		for _, co := range targets {
			co.Kill()
		}
		li.prober.kick()
		time.Sleep(held)
		for _, co := range targets {
			co.Restart(li.t)
		}
	}
	li.prober.kick()
	f.End = li.rec.now()
	li.faults = append(li.faults, f)
}
