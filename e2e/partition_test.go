package e2e

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

var (
	partitionSeed    = flag.Uint64("partition.seed", 1, "seed of TestPartitions' schedule")
	partitionFaults  = flag.Int("partition.faults", len(partitionKinds), "faults TestPartitions injects: each kind once in seeded order, then kinds drawn at random")
	partitionBound   = flag.Duration("partition.bound", 2*time.Minute, "how soon after the last fault heals every batch must be terminal")
	partitionClients = flag.Int("partition.clients", 3, "concurrent clients in TestPartitions")
	partitionKeep    = flag.String("partition.keep", "", "keep TestPartitions' data and logs under this directory")
)

// partitionKinds are the network faults a schedule draws from.
var partitionKinds = []string{"isolate-leader", "isolate-follower", "isolate-agent", "asymmetric", "flap"}

// Bounds the faults are held to.
const (
	// partElect: from cutting the leader off to a leader on the majority
	// side and the old leader stepping down.
	partElect = 15 * time.Second
	// partLeases: from cutting an agent off to the leader holding none of
	// its leases live (expiry after the TTL, or gossip declaring it dead).
	partLeases = 3*chaosLeaseTTL + 10*time.Second
	// partConverge: from healing to the cluster whole again.
	partConverge = 30 * time.Second
)

// partFault is one injected network fault, as the report lists it.
type partFault struct {
	Kind, Mode, Target string
	At, Held           time.Duration
	// NewLeader is from the cut to a leader on the majority side,
	// StepDown to the cut leader giving up leadership, LeasesGone to the
	// cut agent holding no live lease in the leader's view; 0 where the
	// fault does not measure it.
	NewLeader, StepDown, LeasesGone time.Duration
	Converge                        time.Duration // from heal to whole
	Stale                           int64         // stale results refused from cut to whole
	Note                            string
}

// partitioner runs one schedule's network faults on the test goroutine.
type partitioner struct {
	t     *testing.T
	seed  uint64
	nc    *netCluster
	rng   *rand.Rand
	start time.Time
	log   []partFault
}

// TestPartitions runs every coordinator and agent in its own network
// namespace and cuts links between them (silent drops or refusals, one
// way or both, and flapping bridge ports) under a batch workload, then
// checks the chaos invariants. The default schedule is one fault of each
// kind in an order the seed picks; -partition.faults=N runs a longer one.
func TestPartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	lab := NewNetlab(t)
	seed := *partitionSeed
	t.Logf("seed %d, %d faults (rerun: go test -count=1 -run '^TestPartitions$' ./e2e/ -args -partition.seed=%d -partition.faults=%d)",
		seed, *partitionFaults, seed, *partitionFaults)
	nc := startNetCluster(t, lab, 3, chaosLeaseTTL, keepDir(t, *partitionKeep, "partitions"))
	t.Logf("data and logs in %s", nc.Dir)
	h := newHistory()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < *partitionClients; c++ {
		rng := rand.New(rand.NewPCG(seed, uint64(2000+c)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			chaosClient(nc.chaosCluster, h, rng, fmt.Sprintf("p%dc%d", seed, c), stop)
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	terms := &termWatch{last: make([]coordFigures, len(nc.Coords)), leaderOf: map[uint64]int{}}
	stopWatch := make(chan struct{})
	waitWatch := nc.watch(stopWatch, 100*time.Millisecond, terms.sample)
	defer func() {
		select {
		case <-stopWatch:
		default:
			close(stopWatch)
			waitWatch()
		}
	}()
	p := &partitioner{t: t, seed: seed, nc: nc, rng: rand.New(rand.NewPCG(seed, 1)), start: time.Now()}
	order := p.rng.Perm(len(partitionKinds))
	for i := 0; i < *partitionFaults; i++ {
		time.Sleep(p.between(500*time.Millisecond, 2*time.Second))
		kind := partitionKinds[p.rng.IntN(len(partitionKinds))]
		if i < len(order) {
			kind = partitionKinds[order[i]]
		}
		p.run(kind)
	}
	window := time.Since(p.start)
	close(stopWatch)
	waitWatch()
	close(stop)
	wg.Wait()
	healed := time.Now()
	drain(nc.chaosCluster, h, healed.Add(*partitionBound))
	drained := time.Since(healed)
	iv := check(nc.chaosCluster, h)
	stale := nc.staleTotal()
	p.report(h, iv, terms, stale, window, drained)
	for _, v := range [][]string{iv.ExactlyOnce, iv.Uploads, iv.Monotonic, iv.Terminal, terms.bad} {
		for _, s := range v {
			t.Errorf("seed %d: %s", seed, s)
		}
	}
	if iv.total() > 0 || len(terms.bad) > 0 || t.Failed() {
		t.Logf("logs:\n%s", nc.logs(80))
	}
}

// termWatch checks election safety, at most one leader per raft term, on
// the figures every coordinator exports. A coordinator counts as a term's
// leader when two of its samples in a row say so: its state and term are
// read one after the other, so a single sample taken while it moves on
// to a new term could pair the old state with the new term.
type termWatch struct {
	mu       sync.Mutex
	last     []coordFigures // each coordinator's previous sample
	leaderOf map[uint64]int // term -> the coordinator that led it
	bad      []string
}

// sample takes coordinator i's figures f (nc.watch's callback).
func (w *termWatch) sample(i int, f coordFigures, _ time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.last[i]
	w.last[i] = f
	if !f.Leader || !prev.Leader || prev.Term != f.Term {
		return
	}
	j, ok := w.leaderOf[f.Term]
	switch {
	case !ok:
		w.leaderOf[f.Term] = i
	case j != i:
		w.bad = append(w.bad, fmt.Sprintf("two leaders in term %d: coordinators %d and %d", f.Term, j+1, i+1))
	}
}

// between draws a duration uniformly in [lo, hi).
func (p *partitioner) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(p.rng.Int64N(int64(hi-lo)))
}

// mode draws how cut links lose packets.
func (p *partitioner) mode() CutMode {
	if p.rng.IntN(2) == 0 {
		return CutDrop
	}
	return CutReject
}

// leader waits for the one leader of the whole cluster.
func (p *partitioner) leader() int {
	p.t.Helper()
	l := p.nc.soleLeader(partConverge)
	if l < 0 {
		p.t.Fatalf("seed %d: no single leader before the fault\n%s", p.seed, p.nc.logs(40))
	}
	return l
}

// run injects one fault of kind, heals it and waits until the cluster is
// whole again.
func (p *partitioner) run(kind string) {
	p.t.Helper()
	f := partFault{Kind: kind, At: time.Since(p.start)}
	stale := p.nc.staleTotal()
	cut := time.Now()
	switch kind {
	case "isolate-leader":
		p.isolateLeader(&f)
	case "isolate-follower":
		p.isolateFollower(&f)
	case "isolate-agent":
		p.isolateAgent(&f)
	case "asymmetric":
		p.asymmetric(&f)
	case "flap":
		p.flap(&f)
	default:
		p.t.Fatalf("unknown fault kind %q", kind)
	}
	if err := p.nc.lab.HealAll(); err != nil {
		p.t.Fatalf("seed %d: heal %s: %v", p.seed, kind, err)
	}
	f.Held = time.Since(cut)
	d, err := p.nc.converge(partConverge)
	f.Converge = d
	if err != nil {
		p.t.Fatalf("seed %d: after %s of %s: %v\n%s", p.seed, kind, f.Target, err, p.nc.logs(60))
	}
	f.Stale = p.nc.staleTotal() - stale
	p.log = append(p.log, f)
	p.t.Logf("fault %d at %s: %s %s (%s) held %s; new leader %s, step down %s, leases gone %s, whole after %s, stale refused %d; %s",
		len(p.log), f.At.Round(time.Millisecond), f.Kind, f.Target, f.Mode, f.Held.Round(time.Millisecond),
		ms(f.NewLeader), ms(f.StepDown), ms(f.LeasesGone), f.Converge.Round(time.Millisecond), f.Stale, f.Note)
}

// isolateLeader cuts the leader off from both followers, both ways, and
// waits for a leader on the majority side and the old one to step down.
func (p *partitioner) isolateLeader(f *partFault) {
	l := p.leader()
	mode := p.mode()
	f.Target, f.Mode = p.nc.Coords[l].ID, string(mode)
	hold := p.between(3*time.Second, 6*time.Second)
	var others []*NetNode
	for i, nd := range p.nc.coordNodes {
		if i != l {
			others = append(others, nd)
		}
	}
	cut := time.Now()
	if err := p.nc.lab.Isolate([]*NetNode{p.nc.coordNodes[l]}, others, mode); err != nil {
		p.t.Fatalf("seed %d: %v", p.seed, err)
	}
	// Every coordinator is watched on its own: the cut-off leader's
	// /metrics may answer late, and must not delay seeing the new one.
	var mu sync.Mutex
	stop := make(chan struct{})
	wait := p.nc.watch(stop, 25*time.Millisecond, func(i int, fg coordFigures, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if i != l && fg.Leader && f.NewLeader == 0 {
			f.NewLeader, f.Note = at.Sub(cut), "new leader "+p.nc.Coords[i].ID
		}
		if i == l && !fg.Leader && f.StepDown == 0 {
			f.StepDown = at.Sub(cut)
		}
	})
	defer func() {
		close(stop)
		wait()
	}()
	for {
		el := time.Since(cut)
		mu.Lock()
		newLeader, stepDown := f.NewLeader, f.StepDown
		mu.Unlock()
		if newLeader > 0 && stepDown > 0 && el >= hold {
			return
		}
		if el > partElect {
			p.t.Errorf("seed %d: %s cut off (%s) for %s: new leader after %s, stepped down after %s (0: never)",
				p.seed, f.Target, mode, el.Round(time.Millisecond), newLeader, stepDown)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isolateFollower cuts one follower off from the other coordinators and
// checks the majority keeps (or elects) a leader meanwhile.
func (p *partitioner) isolateFollower(f *partFault) {
	l := p.leader()
	others := p.nc.Running(l)
	fo := others[p.rng.IntN(len(others))]
	mode := p.mode()
	f.Target, f.Mode = p.nc.Coords[fo].ID, string(mode)
	hold := p.between(3*time.Second, 6*time.Second)
	var rest []*NetNode
	for i, nd := range p.nc.coordNodes {
		if i != fo {
			rest = append(rest, nd)
		}
	}
	cut := time.Now()
	if err := p.nc.lab.Isolate([]*NetNode{p.nc.coordNodes[fo]}, rest, mode); err != nil {
		p.t.Fatalf("seed %d: %v", p.seed, err)
	}
	var fs []coordFigures
	leaderless := 0
	for time.Since(cut) < hold {
		fs = p.nc.figures()
		if !majorityLed(fs, fo) {
			leaderless++
		}
		time.Sleep(100 * time.Millisecond)
	}
	for !majorityLed(fs, fo) {
		if time.Since(cut) > hold+partElect {
			p.t.Errorf("seed %d: majority without a leader while %s is cut off", p.seed, f.Target)
			break
		}
		time.Sleep(50 * time.Millisecond)
		fs = p.nc.figures()
	}
	now := "none"
	if ls := leaders(fs); len(ls) > 0 {
		now = p.nc.Coords[ls[0]].ID
	}
	f.Note = fmt.Sprintf("leader %s then %s; samples without a majority leader %d; %s term %d",
		p.nc.Coords[l].ID, now, leaderless, f.Target, fs[fo].Term)
}

// majorityLed says whether a coordinator other than cut calls itself
// leader.
func majorityLed(fs []coordFigures, cut int) bool {
	for _, i := range leaders(fs) {
		if i != cut {
			return true
		}
	}
	return false
}

// isolateAgent cuts an agent (one holding leases, if any does) off from
// every coordinator, both ways, until the leader holds none of its leases
// live (they expired, or gossip declared the agent dead), and then some.
func (p *partitioner) isolateAgent(f *partFault) {
	l := p.leader()
	var as map[string]netAgent
	var err error
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if as, err = p.nc.agentsOn(l); err == nil {
			break
		}
		if time.Since(start) > partConverge {
			p.t.Fatalf("seed %d: agents on the leader: %v", p.seed, err)
		}
	}
	var busy, all []int
	for i, a := range p.nc.chaosCluster.agents {
		all = append(all, i)
		if as[a.ID].LiveLeases > 0 {
			busy = append(busy, i)
		}
	}
	pick := all
	if len(busy) > 0 {
		pick = busy
	}
	ai := pick[p.rng.IntN(len(pick))]
	id := p.nc.chaosCluster.agents[ai].ID
	mode := p.mode()
	f.Target, f.Mode = id, string(mode)
	// Heal either as soon as the leader expired its leases, while the
	// agent may still be running them and retrying their commits (late
	// results, which must be refused as stale), or well after, when the
	// agent has given them up itself.
	var linger time.Duration
	if p.rng.IntN(2) == 1 {
		linger = p.between(chaosLeaseTTL, 2*chaosLeaseTTL)
	}
	held := as[id].LiveLeases
	cut := time.Now()
	if err := p.nc.lab.Isolate([]*NetNode{p.nc.agentNodes[ai]}, p.nc.coordNodes, mode); err != nil {
		p.t.Fatalf("seed %d: %v", p.seed, err)
	}
	var dead time.Duration
	for {
		el := time.Since(cut)
		if as, err := p.nc.agentsOn(l); err == nil {
			if f.LeasesGone == 0 && as[id].LiveLeases == 0 {
				f.LeasesGone = el
			}
			if dead == 0 && as[id].State == "dead" {
				dead = el
			}
		}
		if f.LeasesGone > 0 && el >= f.LeasesGone+linger {
			break
		}
		if el > partLeases {
			p.t.Errorf("seed %d: %s cut off (%s) for %s and the leader still counts its leases live",
				p.seed, id, mode, el.Round(time.Millisecond))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.Note = fmt.Sprintf("held %d leases; healed %s after they expired; declared dead by gossip after %s",
		held, linger.Round(time.Millisecond), ms(dead))
}

// asymmetric cuts one direction of one link between the leader and a
// follower or an agent; the other direction keeps working.
func (p *partitioner) asymmetric(f *partFault) {
	l := p.leader()
	others := p.nc.Running(l)
	follower := p.nc.coordNodes[others[p.rng.IntN(len(others))]]
	agent := p.nc.agentNodes[p.rng.IntN(len(p.nc.agentNodes))]
	leader := p.nc.coordNodes[l]
	pairs := [][2]*NetNode{{leader, follower}, {follower, leader}, {leader, agent}, {agent, leader}}
	pair := pairs[p.rng.IntN(len(pairs))]
	mode := p.mode()
	f.Target, f.Mode = pair[0].Name+"->"+pair[1].Name, string(mode)
	hold := p.between(3*time.Second, 6*time.Second)
	cut := time.Now()
	if err := p.nc.lab.Cut(pair[0], pair[1], mode); err != nil {
		p.t.Fatalf("seed %d: %v", p.seed, err)
	}
	seen := map[string]bool{}
	for time.Since(cut) < hold {
		for _, i := range leaders(p.nc.figures()) {
			seen[p.nc.Coords[i].ID] = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.Note = fmt.Sprintf("leader %s; leaders seen meanwhile %s", leader.Name, strings.Join(sortedKeys(seen), ","))
}

// flap takes one node's bridge port down and up at random intervals.
func (p *partitioner) flap(f *partFault) {
	nodes := append(append([]*NetNode(nil), p.nc.coordNodes...), p.nc.agentNodes...)
	l := p.leader()
	nd := nodes[p.rng.IntN(len(nodes))]
	f.Target, f.Mode = nd.Name, "link down/up"
	if nd == p.nc.coordNodes[l] {
		f.Target += " (leader)"
	}
	total := p.between(4*time.Second, 7*time.Second)
	start := time.Now()
	flaps := 0
	var down time.Duration
	for time.Since(start) < total {
		if err := p.nc.lab.SetLink(nd, false); err != nil {
			p.t.Fatalf("seed %d: %v", p.seed, err)
		}
		d := p.between(100*time.Millisecond, 1500*time.Millisecond)
		time.Sleep(d)
		down += d
		if err := p.nc.lab.SetLink(nd, true); err != nil {
			p.t.Fatalf("seed %d: %v", p.seed, err)
		}
		flaps++
		time.Sleep(p.between(100*time.Millisecond, 1500*time.Millisecond))
	}
	f.Note = fmt.Sprintf("%d flaps, down %s in all", flaps, down.Round(time.Millisecond))
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ms renders a measured duration, "-" when not measured.
func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

// report prints the fault table and the invariant results to stdout.
func (p *partitioner) report(h *history, iv *invariants, terms *termWatch, stale int64, window, drained time.Duration) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "AT\tFAULT\tMODE\tTARGET\tHELD\tNEW_LEADER\tSTEP_DOWN\tLEASES_GONE\tWHOLE_AFTER\tSTALE\tNOTE")
	for _, f := range p.log {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", f.At.Round(time.Millisecond), f.Kind, f.Mode, f.Target,
			f.Held.Round(time.Millisecond), ms(f.NewLeader), ms(f.StepDown), ms(f.LeasesGone), f.Converge.Round(time.Millisecond), f.Stale, f.Note)
	}
	w.Flush()
	verdict := func(v []string) string {
		if len(v) == 0 {
			return "ok"
		}
		return fmt.Sprintf("FAIL(%d)", len(v))
	}
	h.mu.Lock()
	batches, uploads, errs := len(h.batches), len(h.uploads), h.errs
	h.mu.Unlock()
	terms.mu.Lock()
	led, split := len(terms.leaderOf), verdict(terms.bad)
	terms.mu.Unlock()
	fmt.Printf("partitions seed %d: %d faults in %s, %d batches, %d lines, %d uploads, %d client errors retried; "+
		"exactly once %s, uploads %s, monotonic %s, terminal %s, one leader per term %s (%d terms led); "+
		"%d stale results refused; drained in %s\n",
		p.seed, len(p.log), window.Round(time.Second), batches, iv.Lines, uploads, errs,
		verdict(iv.ExactlyOnce), verdict(iv.Uploads), verdict(iv.Monotonic), verdict(iv.Terminal), split, led,
		stale, drained.Round(time.Second))
}
