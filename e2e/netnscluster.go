package e2e

// The chaos cluster with every coordinator and agent in its own network
// namespace on a Netlab, and what the partition tests read from it: the
// raft figures each coordinator exports on /metrics (local, so they answer
// even when the coordinator is cut off) and the leader's view of agents.

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Ports every node uses on its own address (the design's defaults).
const (
	netHTTPPort, netRPCPort, netRaftPort, netGossipPort = 8000, 8001, 8002, 8003
	netAgentMetricsPort, netAgentGossipPort             = 8010, 8013
)

// netProbe reads figures during partitions: short, so a stuck read does
// not hide a change.
var netProbe = &http.Client{Timeout: 3 * time.Second}

// netCluster is a chaosCluster whose processes each run in a namespace.
type netCluster struct {
	*chaosCluster
	lab        *Netlab
	coordNodes []*NetNode // coordNodes[i] runs Coords[i]
	agentNodes []*NetNode // agentNodes[i] runs chaosCluster.agents[i]
}

// startNetCluster starts three coordinators and nAgents agents (each on
// the in-process sim engine), every one in its own namespace of lab,
// advertising its namespace address. dir holds data and logs; "" means a
// fresh t.TempDir().
func startNetCluster(t testing.TB, lab *Netlab, nAgents int, leaseTTL time.Duration, dir string) *netCluster {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	bin := filepath.Join(Binaries(t), "vbatch")
	c := &Cluster{t: t, Dir: dir, Bin: bin}
	nc := &netCluster{chaosCluster: &chaosCluster{Cluster: c, banked: make([]int64, 3)}, lab: lab}
	for i := 1; i <= 3; i++ {
		nc.coordNodes = append(nc.coordNodes, lab.AddNode(fmt.Sprintf("c%d", i)))
	}
	for i := 1; i <= nAgents; i++ {
		nc.agentNodes = append(nc.agentNodes, lab.AddNode(fmt.Sprintf("agent%d", i)))
	}
	var gossip []string
	for _, nd := range nc.coordNodes {
		gossip = append(gossip, fmt.Sprintf("%s:%d", nd.IP, netGossipPort))
	}
	for i, nd := range nc.coordNodes {
		co := &Coordinator{
			ID:      nd.Name,
			HTTP:    fmt.Sprintf("%s:%d", nd.IP, netHTTPPort),
			RPC:     fmt.Sprintf("%s:%d", nd.IP, netRPCPort),
			Raft:    fmt.Sprintf("%s:%d", nd.IP, netRaftPort),
			Gossip:  gossip[i],
			DataDir: filepath.Join(dir, nd.Name),
		}
		co.Proc = StartProcIn(t, nd, dir, co.ID, bin, "coordinator",
			"--node-id", co.ID, "--data-dir", co.DataDir,
			"--http-addr", co.HTTP, "--rpc-addr", co.RPC, "--raft-addr", co.Raft, "--gossip-addr", co.Gossip,
			"--bootstrap-expect", "3", "--join", strings.Join(gossip, ","),
			"--insecure-no-auth", "--lease-ttl", leaseTTL.String())
		c.Coords = append(c.Coords, co)
	}
	c.WaitLeader(30 * time.Second)
	for _, nd := range nc.agentNodes {
		a := &Agent{ID: nd.Name, HTTP: fmt.Sprintf("%s:%d", nd.IP, netAgentMetricsPort), Gossip: fmt.Sprintf("%s:%d", nd.IP, netAgentGossipPort)}
		a.Proc = StartProcIn(t, nd, dir, a.ID, bin, "agent",
			"--node-id", a.ID, "--data-dir", filepath.Join(dir, a.ID),
			"--join", strings.Join(gossip, ","), "--gossip-addr", a.Gossip, "--metrics-addr", a.HTTP,
			"--model", "sim-model", "--engine", "sim", "--sim-latency", "10ms",
			"--concurrency", "16", "--part-lines", "100")
		nc.chaosCluster.agents = append(nc.chaosCluster.agents, a)
	}
	c.WaitAgents(t, nAgents)
	return nc
}

// coordFigures is what one coordinator's /metrics says about raft.
type coordFigures struct {
	OK                    bool // the scrape answered
	Leader                bool
	Term, Commit, Applied uint64
	Peers, PeersAlive     int
}

// scrapeUnlabeled reads, with client, the unlabeled samples of url's
// /metrics named in want.
func scrapeUnlabeled(client *http.Client, url string, want map[string]bool) (map[string]float64, error) {
	resp, err := client.Get(url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: status %d", url, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && want[f[0]] {
			v, err := strconv.ParseFloat(f[1], 64)
			if err == nil {
				out[f[0]] += v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("GET %s/metrics: %w", url, err)
	}
	return out, nil
}

var raftFigureNames = map[string]bool{
	"vbatch_raft_leader": true, "vbatch_raft_term": true, "vbatch_raft_commit_index": true,
	"vbatch_raft_applied_index": true, "vbatch_raft_peers": true, "vbatch_raft_peers_alive": true,
}

// figures scrapes every coordinator at once.
func (nc *netCluster) figures() []coordFigures {
	out := make([]coordFigures, len(nc.Coords))
	var wg sync.WaitGroup
	for i, co := range nc.Coords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := scrapeUnlabeled(netProbe, co.URL(), raftFigureNames)
			if err != nil {
				return
			}
			out[i] = figuresOf(m)
		}()
	}
	wg.Wait()
	return out
}

// watch scrapes every coordinator in a loop of its own, every gap, and
// hands each answer to fn with the time it arrived, until stop closes; a
// coordinator slow to answer does not delay what the others report. fn
// runs concurrently. The returned func waits for the loops to end.
func (nc *netCluster) watch(stop <-chan struct{}, gap time.Duration, fn func(i int, f coordFigures, at time.Time)) func() {
	var wg sync.WaitGroup
	for i, co := range nc.Coords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if m, err := scrapeUnlabeled(netProbe, co.URL(), raftFigureNames); err == nil {
					fn(i, figuresOf(m), time.Now())
				}
				select {
				case <-stop:
					return
				case <-time.After(gap):
				}
			}
		}()
	}
	return wg.Wait
}

func figuresOf(m map[string]float64) coordFigures {
	return coordFigures{
		OK: true, Leader: m["vbatch_raft_leader"] == 1, Term: uint64(m["vbatch_raft_term"]),
		Commit: uint64(m["vbatch_raft_commit_index"]), Applied: uint64(m["vbatch_raft_applied_index"]),
		Peers: int(m["vbatch_raft_peers"]), PeersAlive: int(m["vbatch_raft_peers_alive"]),
	}
}

// leaders returns the coordinators that call themselves leader.
func leaders(fs []coordFigures) []int {
	var out []int
	for i, f := range fs {
		if f.OK && f.Leader {
			out = append(out, i)
		}
	}
	return out
}

// soleLeader waits until exactly one coordinator calls itself leader and
// every coordinator answers with its term, and returns it, or -1.
func (nc *netCluster) soleLeader(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		fs := nc.figures()
		if ls := leaders(fs); len(ls) == 1 && sameTerm(fs) {
			return ls[0]
		}
		if time.Now().After(deadline) {
			return -1
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sameTerm(fs []coordFigures) bool {
	for _, f := range fs {
		if !f.OK || f.Term != fs[0].Term {
			return false
		}
	}
	return true
}

// netAgent is one agent as GET /v1/admin/agents shows it.
type netAgent struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	LiveLeases int    `json:"live_leases"`
}

// agentsOn reads coordinator i's view of the agents.
func (nc *netCluster) agentsOn(i int) (map[string]netAgent, error) {
	var body struct {
		Data []netAgent `json:"data"`
	}
	resp, err := netProbe.Get(nc.Coords[i].URL() + "/v1/admin/agents")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := decodeBody(resp, &body); err != nil {
		return nil, fmt.Errorf("agents on %s: %w", nc.Coords[i].ID, err)
	}
	out := map[string]netAgent{}
	for _, a := range body.Data {
		out[a.ID] = a
	}
	return out, nil
}

// converge waits until the healed cluster is whole again: one leader that
// every coordinator names in its cluster status, one term, every
// coordinator applied up to what the leader had committed when it was
// first seen, and every agent alive in the leader's view. It returns how
// long that took, or an error naming what was still missing at timeout.
func (nc *netCluster) converge(timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var mark uint64 // the leader's commit index when first seen whole
	missing := ""
	for time.Now().Before(deadline) {
		missing = nc.whole(&mark)
		if missing == "" {
			return time.Since(start), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start), fmt.Errorf("not converged after %s: %s", timeout, missing)
}

// whole is one round of converge's checks; it returns what is missing.
func (nc *netCluster) whole(mark *uint64) string {
	fs := nc.figures()
	ls := leaders(fs)
	if len(ls) != 1 || !sameTerm(fs) {
		return fmt.Sprintf("leaders %v, figures %+v", ls, fs)
	}
	l := ls[0]
	if *mark == 0 {
		*mark = fs[l].Commit
	}
	for i, f := range fs {
		if f.Applied < *mark {
			return fmt.Sprintf("%s applied %d < %d", nc.Coords[i].ID, f.Applied, *mark)
		}
	}
	for i := range nc.Coords {
		var s Status
		if err := getJSONWith(netProbe, nc.Coords[i].URL()+"/v1/admin/cluster/status", &s); err != nil {
			return fmt.Sprintf("status of %s: %v", nc.Coords[i].ID, err)
		}
		if s.Leader != nc.Coords[l].ID {
			return fmt.Sprintf("%s names leader %q, not %s", nc.Coords[i].ID, s.Leader, nc.Coords[l].ID)
		}
	}
	as, err := nc.agentsOn(l)
	if err != nil {
		return err.Error()
	}
	for _, a := range nc.chaosCluster.agents {
		if as[a.ID].State != "alive" {
			return fmt.Sprintf("%s is %q on the leader", a.ID, as[a.ID].State)
		}
	}
	return ""
}

// getJSONWith GETs url through hc and decodes a 200 answer into v.
func getJSONWith(hc *http.Client, url string, v any) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := decodeBody(resp, v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// logs returns the tails of every coordinator's and agent's log.
func (nc *netCluster) logs(lines int) string {
	var b strings.Builder
	for _, co := range nc.Coords {
		fmt.Fprintf(&b, "==== %s ====\n%s\n", co.ID, tail(co.Log(), lines))
	}
	for _, a := range nc.chaosCluster.agents {
		fmt.Fprintf(&b, "==== %s ====\n%s\n", a.ID, tail(a.Log(), lines))
	}
	return b.String()
}

// keepDir returns a fresh directory under root for a run's data and logs
// that outlives the test, or "" when root is "".
func keepDir(t testing.TB, root, name string) string {
	t.Helper()
	if root == "" {
		return ""
	}
	dir := filepath.Join(root, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("keep dir: %v", err)
	}
	return dir
}
