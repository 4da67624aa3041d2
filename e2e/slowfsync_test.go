//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	slowfsyncHold    = flag.Duration("slowfsync.phase", 5*time.Second, "how long TestSlowFsync holds each fsync delay (and the phases without one)")
	slowfsyncDelays  = flag.String("slowfsync.delays", "200ms,1s", "fsync delays TestSlowFsync applies in order, first on a follower, then on the leader")
	slowfsyncBound   = flag.Duration("slowfsync.bound", 2*time.Minute, "how soon after the slow disk recovers every batch must be terminal")
	slowfsyncHealth  = flag.Duration("slowfsync.health", 30*time.Second, "how soon after the slow disk recovers autopilot must call every server healthy")
	slowfsyncHandoff = flag.Duration("slowfsync.handoff", 20*time.Second, "how soon after its disk turns slow the leader must hand leadership to a follower")
	slowfsyncLogs    = flag.String("slowfsync.logs", "", "copy TestSlowFsync's process logs into this directory")
)

// slowNodeIdx is the coordinator whose data dir is on the slow filesystem.
const slowNodeIdx = 0

// TestSlowFsync puts coordinator c1's data dir (raft log, snapshots, blob
// store) on a filesystem whose fsyncs can be made slow, runs the chaos
// clients against the cluster, and makes c1's fsyncs slow, first while it
// follows, then while it leads, then fast again. It checks the chaos
// invariants (every custom_id exactly once, acknowledged uploads read back
// identical, statuses monotonic, batches terminal within a bound after
// the disk recovers), that the cluster serves through a slow follower and
// that autopilot calls every server healthy again after, and records per
// phase the served requests/s, upload latency through the slow and a fast
// coordinator, leadership moves and c1's autopilot health.
//
// The default (two delays, 5 s phases) takes about 40 s; a longer
// run (about 4 min): -slowfsync.phase 20s -slowfsync.delays 50ms,200ms,1s,3s.
func TestSlowFsync(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes and mounts a FUSE filesystem")
	}
	delays, err := parseSlowfsyncDelays(*slowfsyncDelays)
	if err != nil {
		t.Fatal(err)
	}
	sfs := MountSlowFS(t)
	cc := startSlowfsyncCluster(t, filepath.Join(sfs.Dir, "c1"))
	failed := true
	defer func() {
		if failed {
			t.Logf("coordinator logs:\n%s", cc.Logs())
		}
		if *slowfsyncLogs != "" {
			slowfsyncKeepLogs(t, cc.Dir, *slowfsyncLogs)
		}
	}()
	fast := 1 // a coordinator on the ordinary disk
	slowID := cc.Coords[slowNodeIdx].ID

	h := newHistory()
	run := newSlowfsyncRun(cc, sfs, h, fast)
	stop := make(chan struct{})
	halt := sync.OnceFunc(func() { close(stop) })
	var wg sync.WaitGroup
	// On any exit, before the processes are stopped: a fast disk again,
	// so they shut down promptly, and no client left running.
	t.Cleanup(func() {
		sfs.SetDelay(0)
		halt()
		wg.Wait()
	})
	for c := 0; c < *chaosClients; c++ {
		rng := rand.New(rand.NewPCG(7, uint64(1000+c)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			chaosClient(cc, h, rng, fmt.Sprintf("slow-c%d", c), stop)
		}()
	}
	for _, target := range []int{slowNodeIdx, fast} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run.probeUploads(target, stop)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		run.monitor(stop)
	}()

	// The slow node follows first.
	if cc.leader() == slowNodeIdx {
		slowfsyncTransfer(t, cc, slowNodeIdx, fast)
	}
	run.phase(t, "baseline", "follower", 0, *slowfsyncHold)
	for _, d := range delays {
		run.phase(t, "slow follower", "follower", d, *slowfsyncHold)
	}
	// Then it leads: hand it leadership while its disk is fast, so the
	// transfer itself is not what the delay measures.
	sfs.SetDelay(0)
	took := slowfsyncTransfer(t, cc, fast, slowNodeIdx)
	t.Logf("leadership handed to %s in %s", slowID, took.Round(time.Millisecond))
	// A leader whose log writes stay slow hands leadership to a follower
	// with a fast disk (coordinator/slowleader.go), while the disk is
	// still slow: watch for the move while the slow-leader phases run.
	slowSince := time.Now()
	moved := make(chan time.Duration, 1)
	watchDone := make(chan struct{})
	go func() {
		defer close(moved)
		for time.Since(slowSince) <= *slowfsyncHandoff {
			if l := cc.leader(); l >= 0 && l != slowNodeIdx {
				moved <- time.Since(slowSince)
				return
			}
			select {
			case <-watchDone:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	for _, d := range delays {
		run.phase(t, "slow leader", "leader", d, *slowfsyncHold)
	}
	if after, ok := <-moved; ok {
		t.Logf("the slow leader handed leadership away %s after its disk turned slow", after.Round(100*time.Millisecond))
	} else {
		t.Errorf("leadership still on the slow node %s %s after its disk turned slow", slowID, *slowfsyncHandoff)
	}
	close(watchDone)
	run.phase(t, "recovered", "", 0, *slowfsyncHold)
	recovered := run.recoveredAt

	// Heal: the disk is fast again; every batch must finish within the bound.
	if cc.waitLeader(30*time.Second) < 0 {
		t.Fatalf("no leader after the slow disk recovered\n%s", cc.Logs())
	}
	cc.WaitAgents(t, 3)
	slowfsyncWaitHealthy(t, cc, fast, recovered, *slowfsyncHealth)
	halt()
	wg.Wait()
	drain(cc, h, recovered.Add(*slowfsyncBound))
	drained := time.Since(recovered)
	iv := check(cc, h)

	run.report(t)
	h.mu.Lock()
	t.Logf("%d batches, %d lines, %d acknowledged uploads, %d client errors; batches drained %s after the disk recovered",
		len(h.batches), iv.Lines, len(h.uploads), h.errs, drained.Round(time.Second))
	h.mu.Unlock()
	for _, v := range [][]string{iv.ExactlyOnce, iv.Uploads, iv.Monotonic, iv.Terminal} {
		for _, s := range v {
			t.Errorf("invariant: %s", s)
		}
	}
	run.assertFault(t)
	for _, co := range cc.Coords {
		if strings.Contains(co.Log(), "panic:") {
			t.Errorf("%s panicked:\n%s", co.ID, tail(co.Log(), 40))
		}
	}
	failed = t.Failed()
}

// startSlowfsyncCluster is startChaosCluster with coordinator c1's data
// dir at slowDir.
func startSlowfsyncCluster(t *testing.T, slowDir string) *chaosCluster {
	t.Helper()
	dirs := make([]string, 3)
	dirs[slowNodeIdx] = slowDir
	c := StartClusterDirs(t, 3, ClusterOptions{Extra: []string{"--lease-ttl", chaosLeaseTTL.String()}}, dirs)
	cc := &chaosCluster{Cluster: c, banked: make([]int64, 3)}
	for i := 1; i <= 3; i++ {
		s := c.StartSim(t, fmt.Sprintf("sim%d", i), "--latency", "10ms")
		cc.sims = append(cc.sims, s)
		cc.agents = append(cc.agents, c.StartAgent(t, fmt.Sprintf("agent%d", i),
			"--engine", "openai", "--engine-url", "http://"+s.Addr, "--concurrency", "16", "--part-lines", "100"))
	}
	c.WaitAgents(t, 3)
	return cc
}

// parseSlowfsyncDelays parses a comma-separated list of positive durations.
func parseSlowfsyncDelays(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("-slowfsync.delays %q: %q is not a positive duration (%v)", s, f, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// slowfsyncTransfer asks coordinator via to hand leadership to coordinator
// to, retrying (raft refuses while the target is behind), and returns how
// long it took until every coordinator named to as leader.
func slowfsyncTransfer(t *testing.T, cc *chaosCluster, via, to int) time.Duration {
	t.Helper()
	start := time.Now()
	body, _ := json.Marshal(map[string]string{"to": cc.Coords[to].ID})
	var last string
	for time.Since(start) < 30*time.Second {
		resp, err := chaosHTTP.Post(cc.Coords[via].URL()+"/v1/admin/cluster/transfer-leadership", "application/json", bytes.NewReader(body))
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
		} else {
			last = err.Error()
		}
		if cc.waitLeader(5*time.Second) == to {
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("leadership not handed to %s within 30s; last answer: %s\n%s", cc.Coords[to].ID, last, cc.Logs())
	return 0
}

// slowfsyncWaitHealthy waits until the leader's autopilot calls the
// cluster and every server healthy, failing the test if that is not so
// within bound of since.
func slowfsyncWaitHealthy(t *testing.T, cc *chaosCluster, via int, since time.Time, bound time.Duration) {
	t.Helper()
	var last string
	for {
		st, err := slowfsyncStatusOf(cc, via)
		if err == nil && st.Autopilot != nil {
			ok := st.Autopilot.Healthy && len(st.Autopilot.Servers) == len(cc.Coords)
			for _, s := range st.Autopilot.Servers {
				ok = ok && s.Healthy
			}
			if ok {
				return
			}
			b, _ := json.Marshal(st.Autopilot)
			last = string(b)
		} else if err != nil {
			last = err.Error()
		}
		if time.Since(since) > bound {
			t.Fatalf("autopilot does not call every server healthy %s after the slow disk recovered: %s", bound, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// slowfsyncKeepLogs copies every process log under dir into keep.
func slowfsyncKeepLogs(t *testing.T, dir, keep string) {
	logs, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err == nil {
		err = os.MkdirAll(keep, 0o755)
	}
	for _, l := range logs {
		if err != nil {
			break
		}
		var b []byte
		if b, err = os.ReadFile(l); err == nil {
			err = os.WriteFile(filepath.Join(keep, filepath.Base(l)), b, 0o644)
		}
	}
	if err != nil {
		t.Errorf("keep logs in %s: %v", keep, err)
		return
	}
	t.Logf("process logs copied to %s", keep)
}
