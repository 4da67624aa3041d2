//go:build linux

package e2e

// What TestSlowFsync measures while it holds each fsync delay: requests the
// simulators served, upload latency through the slow and a fast
// coordinator, the leader and autopilot's view of the slow node sampled
// every 250 ms, and the fsyncs the slow filesystem delayed.

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

// slowfsyncHTTP lets a probe upload take as long as the slow disk makes
// it, so the latency is measured rather than cut at chaosHTTP's 10 s.
var slowfsyncHTTP = &http.Client{Timeout: 60 * time.Second}

// slowfsyncStatusHTTP is the monitor's client: a sample that takes longer
// than this is a missed sample.
var slowfsyncStatusHTTP = &http.Client{Timeout: 3 * time.Second}

// slowfsyncStatus is the part of GET /v1/admin/cluster/status the test reads.
type slowfsyncStatus struct {
	Leader    string `json:"leader"`
	Autopilot *struct {
		Healthy          bool `json:"healthy"`
		FailureTolerance int  `json:"failure_tolerance"`
		Servers          []struct {
			ID            string `json:"id"`
			RaftState     string `json:"raft_state"`
			Healthy       bool   `json:"healthy"`
			LastContactMs int64  `json:"last_contact_ms"`
			LastIndex     uint64 `json:"last_index"`
		} `json:"servers"`
	} `json:"autopilot"`
	AutopilotError string `json:"autopilot_error"`
}

// slowfsyncStatusOf asks coordinator i for the cluster status.
func slowfsyncStatusOf(cc *chaosCluster, i int) (*slowfsyncStatus, error) {
	var st slowfsyncStatus
	resp, err := slowfsyncStatusHTTP.Get(cc.Coords[i].URL() + "/v1/admin/cluster/status")
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", cc.Coords[i].ID, err)
	}
	defer resp.Body.Close()
	if err := decodeBody(resp, &st); err != nil {
		return nil, fmt.Errorf("status of %s: %w", cc.Coords[i].ID, err)
	}
	return &st, nil
}

// slowfsyncLatencies are one phase's uploads through one coordinator.
type slowfsyncLatencies struct {
	OK     []time.Duration
	Failed int
}

// summary is "n ok p50/max" plus failures.
func (l *slowfsyncLatencies) summary() string {
	if l == nil || len(l.OK) == 0 {
		if l != nil && l.Failed > 0 {
			return fmt.Sprintf("0 ok, %d failed", l.Failed)
		}
		return "none"
	}
	d := append([]time.Duration(nil), l.OK...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	s := fmt.Sprintf("%d: p50 %s max %s", len(d), d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	if l.Failed > 0 {
		s += fmt.Sprintf(", %d failed", l.Failed)
	}
	return s
}

// slowfsyncPhase is one held delay and what was measured meanwhile.
type slowfsyncPhase struct {
	Name, Role string // Role is what the slow node was meant to be
	Delay      time.Duration
	Start      time.Time
	Took       time.Duration
	Served     int64 // requests the simulators served
	ClientErrs int
	Uploads    map[int]*slowfsyncLatencies // by coordinator index
	// Leaders counts status samples by the leader they named;
	// LeaderChanges counts samples naming a leader other than the phase's
	// previous sample.
	Leaders       map[string]int
	LeaderChanges int
	lastLeader    string
	// Samples, SlowHealthy and ClusterHealthy count autopilot samples and
	// those calling the slow node, and the whole cluster, healthy.
	Samples, SlowHealthy, ClusterHealthy int
	MaxContactMs                         int64 // slow node's worst last contact
	MaxLag                               uint64
	// FirstHealthy is when, from the phase's start, a sample first called
	// the cluster and every server healthy; 0 if none did.
	FirstHealthy time.Duration
	FS           SlowFSStats
}

// slowfsyncRun is TestSlowFsync's measurements.
type slowfsyncRun struct {
	cc   *chaosCluster
	sfs  *SlowFS
	h    *history
	fast int

	mu          sync.Mutex
	phases      []*slowfsyncPhase
	recoveredAt time.Time
}

func newSlowfsyncRun(cc *chaosCluster, sfs *SlowFS, h *history, fast int) *slowfsyncRun {
	return &slowfsyncRun{cc: cc, sfs: sfs, h: h, fast: fast}
}

// current is the phase running now, nil before the first.
func (r *slowfsyncRun) current() *slowfsyncPhase {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.phases) == 0 {
		return nil
	}
	return r.phases[len(r.phases)-1]
}

// served sums what every simulator served.
func (r *slowfsyncRun) served(t *testing.T) int64 {
	var n int64
	for _, s := range r.cc.sims {
		n += s.Served(t)
	}
	return n
}

// phase sets the slow node's fsync delay and holds it for d, measuring.
func (r *slowfsyncRun) phase(t *testing.T, name, role string, delay, d time.Duration) {
	t.Helper()
	p := &slowfsyncPhase{Name: name, Role: role, Delay: delay,
		Uploads: map[int]*slowfsyncLatencies{}, Leaders: map[string]int{}}
	served := r.served(t)
	fs := r.sfs.Stats()
	r.h.mu.Lock()
	errs := r.h.errs
	r.h.mu.Unlock()
	start := time.Now()
	p.Start = start
	r.mu.Lock()
	r.phases = append(r.phases, p)
	if delay == 0 && role == "" {
		r.recoveredAt = start
	}
	r.mu.Unlock()
	r.sfs.SetDelay(delay)
	time.Sleep(d)

	servedEnd := r.served(t)
	r.h.mu.Lock()
	errsEnd := r.h.errs
	r.h.mu.Unlock()
	r.mu.Lock()
	p.Took = time.Since(start)
	p.Served = servedEnd - served
	p.ClientErrs = errsEnd - errs
	p.FS = r.sfs.Stats().Sub(fs)
	r.mu.Unlock()
}

// probeUploads uploads a small batch file through coordinator i, one after
// the other until stop closes, recording each latency in the phase it
// started in; acknowledged uploads join the history's uploads, so the
// checker reads every one back.
func (r *slowfsyncRun) probeUploads(i int, stop <-chan struct{}) {
	co := r.cc.Coords[i]
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		p := r.current()
		if p == nil {
			continue
		}
		data := chaosLines(fmt.Sprintf("probe-%s-%d", co.ID, n), 20)
		start := time.Now()
		id, err := chaosUploadWith(slowfsyncHTTP, co.URL(), fmt.Sprintf("probe-%d.jsonl", n), data)
		took := time.Since(start)
		if err == nil {
			r.h.mu.Lock()
			r.h.uploads[id] = sum256(data)
			r.h.mu.Unlock()
		}
		r.mu.Lock()
		l := p.Uploads[i]
		if l == nil {
			l = &slowfsyncLatencies{}
			p.Uploads[i] = l
		}
		if err == nil {
			l.OK = append(l.OK, took)
		} else {
			l.Failed++
		}
		r.mu.Unlock()
	}
}

// monitor samples the cluster status through the fast coordinator every
// 250 ms until stop closes.
func (r *slowfsyncRun) monitor(stop <-chan struct{}) {
	slowID := r.cc.Coords[slowNodeIdx].ID
	for {
		select {
		case <-stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
		p := r.current()
		if p == nil {
			continue
		}
		st, err := slowfsyncStatusOf(r.cc, r.fast)
		if err != nil {
			continue
		}
		r.mu.Lock()
		if st.Leader != "" {
			p.Leaders[st.Leader]++
			if p.lastLeader != "" && st.Leader != p.lastLeader {
				p.LeaderChanges++
			}
			p.lastLeader = st.Leader
		}
		if ap := st.Autopilot; ap != nil {
			p.Samples++
			if ap.Healthy {
				p.ClusterHealthy++
			}
			var top uint64
			all := ap.Healthy && len(ap.Servers) == len(r.cc.Coords)
			for _, s := range ap.Servers {
				top = max(top, s.LastIndex)
				all = all && s.Healthy
			}
			if all && p.FirstHealthy == 0 {
				p.FirstHealthy = time.Since(p.Start)
			}
			for _, s := range ap.Servers {
				if s.ID != slowID {
					continue
				}
				if s.Healthy {
					p.SlowHealthy++
				}
				p.MaxContactMs = max(p.MaxContactMs, s.LastContactMs)
				p.MaxLag = max(p.MaxLag, top-s.LastIndex)
			}
		}
		r.mu.Unlock()
	}
}

// report logs one row per phase.
func (r *slowfsyncRun) report(t *testing.T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	slowID, fastID := r.cc.Coords[slowNodeIdx].ID, r.cc.Coords[r.fast].ID
	fmt.Fprintf(w, "PHASE\tFROM\tDELAY\tREQ/S\tUPLOADS VIA %s (slow)\tUPLOADS VIA %s\tCLIENT_ERRS\tLEADERS\tLEADER_CHANGES\t%s HEALTHY\tCLUSTER HEALTHY\tALL HEALTHY AT\t%s MAX_CONTACT\t%s MAX_LAG\tFSYNCS (DIR)\tDELAYED\tDIR×DELAY\n",
		slowID, fastID, slowID, slowID, slowID)
	for _, p := range r.phases {
		var leaders []string
		for id, n := range p.Leaders {
			leaders = append(leaders, fmt.Sprintf("%s×%d", id, n))
		}
		sort.Strings(leaders)
		name := p.Name
		if p.Role != "" {
			name += " (" + slowID + " " + p.Role + ")"
		}
		at := "never"
		if p.FirstHealthy > 0 {
			at = "+" + p.FirstHealthy.Round(100*time.Millisecond).String()
		}
		// Directory fsyncs times the delay, against the phase's length:
		// near 100% means they ran one at a time for the whole phase.
		dirBusy := fmt.Sprintf("%.0f%%", 100*float64(p.FS.DirFsyncs)*p.Delay.Seconds()/p.Took.Seconds())
		fmt.Fprintf(w, "%s\t%s\t%s\t%.0f\t%s\t%s\t%d\t%s\t%d\t%d/%d\t%d/%d\t%s\t%dms\t%d\t%d (%d)\t%d\t%s\n",
			name, p.Start.Format("15:04:05.000"), p.Delay, float64(p.Served)/p.Took.Seconds(), p.Uploads[slowNodeIdx].summary(), p.Uploads[r.fast].summary(),
			p.ClientErrs, strings.Join(leaders, " "), p.LeaderChanges, p.SlowHealthy, p.Samples, p.ClusterHealthy, p.Samples, at,
			p.MaxContactMs, p.MaxLag, p.FS.Total(), p.FS.DirFsyncs, p.FS.Delayed, dirBusy)
	}
	w.Flush()
	t.Logf("per phase:\n%s", b.String())
}

// assertFault checks the fault really happened (the slow node delayed
// fsyncs in every slow phase) and that a slow follower did not stop the
// cluster: uploads through a fast coordinator were acknowledged. (The
// simulators may serve nothing in a phase: the clients can all be waiting
// on the slow node.)
func (r *slowfsyncRun) assertFault(t *testing.T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.phases {
		if p.Delay > 0 && p.FS.Delayed == 0 {
			t.Errorf("phase %q (%s): %s made no fsync the slow filesystem delayed; is its data dir on the mount?", p.Name, p.Delay, r.cc.Coords[slowNodeIdx].ID)
		}
		if p.Role == "follower" {
			if l := p.Uploads[r.fast]; l == nil || len(l.OK) == 0 {
				t.Errorf("phase %q (%s): no upload through %s acknowledged while %s followed", p.Name, p.Delay, r.cc.Coords[r.fast].ID, r.cc.Coords[slowNodeIdx].ID)
			}
		}
	}
}
