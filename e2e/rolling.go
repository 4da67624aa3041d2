package e2e

// The rolling-restart harness: a cluster of three coordinators and three
// agents on simulators slow enough that one batch outlasts a whole roll,
// the operator's procedure of docs/deployment.md ("Upgrading: rolling
// restart") as code, and the health check it waits on between steps: the
// leader's autopilot view (`vbctl cluster status`) healthy with failure
// tolerance 1.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Rolling cluster tuning: 3 agents × rollConcurrency requests in flight,
// each taking rollSimLatency, run about 120 lines/s, so a batch of
// rollLinesPerRound lines lasts ~50 s per round, longer than a roll.
const (
	rollSimLatency    = 200 * time.Millisecond
	rollConcurrency   = 8
	rollChunkSize     = 100
	rollPartLines     = 20
	rollLinesPerRound = 6000
	// rollStabilization is --server-stabilization-time: a rejoining
	// coordinator votes once healthy this long (production: 10s).
	rollStabilization = time.Second
	// rollMaxTrailing is autopilot's MaxTrailingLogs: a server this far
	// behind the leader's last index is unhealthy.
	rollMaxTrailing = 250
	// rollSettle is how long the cluster must stay healthy to count as
	// healthy: two autopilot update intervals (1 s each by default).
	rollSettle = 2 * time.Second
	// rollSlowStep is a restart to healthy slow enough to log why.
	rollSlowStep = 5 * time.Second
)

// rollRounds is how many rolls (or kill-all rounds) a test runs:
// VBATCH_ROLL_ROUNDS, default 1. More rounds run a proportionally larger
// batch.
func rollRounds(t testing.TB) int {
	t.Helper()
	v := os.Getenv("VBATCH_ROLL_ROUNDS")
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("VBATCH_ROLL_ROUNDS=%q: want a positive integer", v)
	}
	return n
}

// rollCluster is the cluster a roll runs against.
type rollCluster struct {
	*Cluster
	sims   []*Sim
	agents []*Agent
	down   *rollDown
	hc     *http.Client
}

func startRollCluster(t testing.TB) *rollCluster {
	t.Helper()
	c := StartCluster(t, 3, ClusterOptions{Extra: []string{
		"--server-stabilization-time", rollStabilization.String(),
		"--chunk-size", strconv.Itoa(rollChunkSize),
	}})
	rc := &rollCluster{Cluster: c, down: newRollDown(3), hc: &http.Client{Timeout: 5 * time.Second}}
	for i := 1; i <= 3; i++ {
		s := c.StartSim(t, fmt.Sprintf("sim%d", i), "--latency", rollSimLatency.String())
		rc.sims = append(rc.sims, s)
		rc.agents = append(rc.agents, c.StartAgent(t, fmt.Sprintf("agent%d", i),
			"--engine", "openai", "--engine-url", "http://"+s.Addr,
			"--concurrency", strconv.Itoa(rollConcurrency), "--part-lines", strconv.Itoa(rollPartLines)))
	}
	c.WaitAgents(t, 3)
	return rc
}

// rollClusterStatus is GET /v1/admin/cluster/status with the autopilot view.
type rollClusterStatus struct {
	Leader  string `json:"leader"`
	Servers []struct {
		ID        string `json:"id"`
		Suffrage  string `json:"suffrage"`
		LastIndex uint64 `json:"last_index"`
		Reachable bool   `json:"reachable"`
	} `json:"servers"`
	Autopilot *struct {
		Healthy          bool `json:"healthy"`
		FailureTolerance int  `json:"failure_tolerance"`
		Servers          []struct {
			ID         string `json:"id"`
			Healthy    bool   `json:"healthy"`
			NodeStatus string `json:"node_status"`
			RaftState  string `json:"raft_state"`
		} `json:"servers"`
	} `json:"autopilot"`
	AutopilotError string `json:"autopilot_error"`
}

// getJSON GETs path from coordinator i and decodes a 200 answer.
func (rc *rollCluster) getJSON(i int, path string, v any) error {
	resp, err := rc.hc.Get(rc.Coords[i].URL() + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeBody(resp, v)
}

// post POSTs a JSON body (nil: none) to coordinator i and decodes a 200
// answer into v (nil: discard).
func (rc *rollCluster) post(i int, path string, body, v any) error {
	var rd bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&rd).Encode(body); err != nil {
			return fmt.Errorf("POST %s: encode: %w", path, err)
		}
	}
	resp, err := rc.hc.Post(rc.Coords[i].URL()+path, "application/json", &rd)
	if err != nil {
		return fmt.Errorf("POST %s on %s: %w", path, rc.Coords[i].ID, err)
	}
	defer resp.Body.Close()
	if v == nil {
		v = &json.RawMessage{}
	}
	if err := decodeBody(resp, v); err != nil {
		return fmt.Errorf("POST %s on %s: %w", path, rc.Coords[i].ID, err)
	}
	return nil
}

// healthy reports whether the cluster is what an operator waits for
// between two steps of a roll: every coordinator answers and names the
// same leader; the leader's autopilot says healthy with failure tolerance
// at least 1, all three servers healthy voters; and, read fresh from each
// server (autopilot's view may be up to a second old), every one is
// reachable, a voter and within autopilot's trailing-log bound of the
// leader ("LAST INDEX is level" in docs/deployment.md). The error says
// what is missing.
func (rc *rollCluster) healthy() (leader int, err error) {
	name := ""
	var view rollClusterStatus
	for i, co := range rc.Coords {
		var st rollClusterStatus
		if err := rc.getJSON(i, "/v1/admin/cluster/status", &st); err != nil {
			return -1, fmt.Errorf("%s: %w", co.ID, err)
		}
		if st.Leader == "" || (name != "" && st.Leader != name) {
			return -1, fmt.Errorf("%s names leader %q, others %q", co.ID, st.Leader, name)
		}
		name = st.Leader
		if co.ID == name {
			leader, view = i, st
		}
	}
	if view.Leader == "" {
		return -1, fmt.Errorf("leader %q is not one of ours", name)
	}
	ap := view.Autopilot
	switch {
	case ap == nil:
		return -1, fmt.Errorf("no autopilot view: %s", view.AutopilotError)
	case !ap.Healthy || ap.FailureTolerance < 1:
		return -1, fmt.Errorf("autopilot healthy=%v failure_tolerance=%d", ap.Healthy, ap.FailureTolerance)
	case len(ap.Servers) != len(rc.Coords):
		return -1, fmt.Errorf("autopilot lists %d servers", len(ap.Servers))
	}
	for _, s := range ap.Servers {
		if !s.Healthy || s.NodeStatus != "alive" || (s.RaftState != "leader" && s.RaftState != "voter") {
			return -1, fmt.Errorf("autopilot: %s healthy=%v node_status=%s raft_state=%s", s.ID, s.Healthy, s.NodeStatus, s.RaftState)
		}
	}
	var top uint64
	for _, s := range view.Servers {
		top = max(top, s.LastIndex)
	}
	if len(view.Servers) != len(rc.Coords) {
		return -1, fmt.Errorf("raft configuration has %d servers", len(view.Servers))
	}
	for _, s := range view.Servers {
		if !s.Reachable || s.Suffrage != "voter" || top-s.LastIndex > rollMaxTrailing {
			return -1, fmt.Errorf("%s reachable=%v suffrage=%s last_index %d of %d", s.ID, s.Reachable, s.Suffrage, s.LastIndex, top)
		}
	}
	return leader, nil
}

var rollDigits = regexp.MustCompile(`[0-9]+`)

// waitHealthy polls healthy until it has held without a break for
// rollSettle and returns the leader's index, when that healthy stretch
// began, and what it waited on before: each distinct reason with when it
// first showed. Autopilot's view is up to one update interval (1 s) old,
// so a single healthy answer right after a restart may predate it;
// healthy for two intervals in a row is a view the restarted process took
// part in.
func (rc *rollCluster) waitHealthy(t testing.TB, timeout time.Duration) (int, time.Time, []string) {
	t.Helper()
	start := time.Now()
	var waited []string
	var since time.Time
	last := ""
	for {
		l, err := rc.healthy()
		switch {
		case err == nil && since.IsZero():
			since = time.Now()
		case err == nil && time.Since(since) >= rollSettle:
			return l, since, waited
		case err != nil:
			since = time.Time{}
			// Reasons that differ only in numbers (last indexes) are one.
			if why := err.Error(); rollDigits.ReplaceAllString(why, "N") != last {
				last = rollDigits.ReplaceAllString(why, "N")
				waited = append(waited, fmt.Sprintf("+%s %s", time.Since(start).Round(time.Millisecond), why))
			}
		}
		if time.Since(start) > timeout {
			t.Fatalf("cluster not healthy for %s in a row within %s: %v\n%s", rollSettle, timeout, err, rc.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitServing waits until coordinator i answers /health, then marks it up
// for the clients.
func (rc *rollCluster) waitServing(t testing.TB, i int) {
	t.Helper()
	WaitFor(t, 30*time.Second, rc.Coords[i].ID+" serving /health", func() bool {
		resp, err := rc.hc.Get(rc.Coords[i].URL() + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	rc.down.set(i, false)
}

// rollStep is one step of a roll, as the report lists it.
type rollStep struct {
	Target  string
	Role    string        // leader, follower or agent
	Handoff time.Duration // leadership transfer or drain before the signal
	Exit    time.Duration // SIGTERM to process exit
	// ToHealth is from the restart to the start of the healthy stretch
	// (see waitHealthy) or, for an agent, to its first request served.
	ToHealth time.Duration
	// Waited lists why the cluster was not yet healthy after the restart.
	Waited []string
}

// stopGracefully sends SIGTERM and waits for the process to exit on its
// own; a process still running after grace fails the test.
func stopGracefully(t testing.TB, p *Proc, grace time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.Name, err)
	}
	if !p.wait(grace) {
		p.Kill()
		t.Fatalf("%s still running %s after SIGTERM; killed\n%s", p.Name, grace, tail(p.Log(), 40))
	}
	return time.Since(start)
}

// restartCoordinator takes coordinator i through one step of the roll,
// starting from a healthy cluster led by coordinator leader: leadership
// handed away first if i leads (vbctl cluster transfer-leadership),
// SIGTERM, exit, restart from its data dir, then wait until the cluster is
// healthy again. It returns the step and the leader at its end.
func (rc *rollCluster) restartCoordinator(t testing.TB, i, leader int) (rollStep, int) {
	t.Helper()
	co := rc.Coords[i]
	step := rollStep{Target: co.ID, Role: "follower"}
	if leader == i {
		step.Role = "leader"
		start := time.Now()
		var out struct {
			Leader string `json:"leader"`
		}
		if err := rc.post(i, "/v1/admin/cluster/transfer-leadership", nil, &out); err != nil {
			t.Fatalf("transfer leadership from %s: %v", co.ID, err)
		}
		if out.Leader == "" || out.Leader == co.ID {
			t.Fatalf("transfer leadership from %s: leader now %q", co.ID, out.Leader)
		}
		if nl := rc.WaitLeader(30 * time.Second); nl == i {
			t.Fatalf("%s leads again right after handing leadership away", co.ID)
		}
		step.Handoff = time.Since(start)
	}
	stopped := strings.Count(co.Log(), "coordinator stopped")
	rc.down.set(i, true)
	step.Exit = stopGracefully(t, co.Proc, 30*time.Second)
	if strings.Count(co.Log(), "coordinator stopped") == stopped {
		t.Errorf("%s exited on SIGTERM without logging a clean stop", co.ID)
	}
	co.Restart(t)
	start := time.Now()
	rc.waitServing(t, i)
	leader, healthy, waited := rc.waitHealthy(t, 60*time.Second)
	step.ToHealth, step.Waited = healthy.Sub(start), waited
	if step.ToHealth > rollSlowStep {
		t.Logf("%s took %s to be healthy again; logs:\n%s", co.ID, step.ToHealth.Round(time.Millisecond), rc.Logs())
	}
	return step, leader
}

// rollAgent is one agent as GET /v1/admin/agents lists it.
type rollAgent struct {
	ID           string `json:"id"`
	State        string `json:"state"`
	LiveLeases   int    `json:"live_leases"`
	RegisteredAt int64  `json:"registered_at"`
}

// agent returns agent id as the first coordinator up lists it.
func (rc *rollCluster) agent(id string) (rollAgent, error) {
	var body struct {
		Data []rollAgent `json:"data"`
	}
	if err := rc.getJSON(rc.Running(-1)[0], "/v1/admin/agents", &body); err != nil {
		return rollAgent{}, err
	}
	for _, a := range body.Data {
		if a.ID == id {
			return a, nil
		}
	}
	return rollAgent{}, fmt.Errorf("agent %s not listed", id)
}

// waitAgent polls agent id until ok holds for it.
func (rc *rollCluster) waitAgent(t testing.TB, id, what string, ok func(rollAgent) bool) {
	t.Helper()
	WaitFor(t, 60*time.Second, id+" "+what, func() bool {
		a, err := rc.agent(id)
		return err == nil && ok(a)
	})
}

// restartAgent takes agent i through one step: with drainFirst the
// operator's `vbctl agents drain ID --wait` first, otherwise SIGTERM alone
// (the agent drains itself), then restart, and wait until the agent is
// registered again, alive and serving requests of the batch again.
func (rc *rollCluster) restartAgent(t testing.TB, i int, drainFirst bool) rollStep {
	t.Helper()
	a := rc.agents[i]
	step := rollStep{Target: a.ID, Role: "agent (SIGTERM)"}
	if drainFirst {
		step.Role = "agent (drain, SIGTERM)"
		start := time.Now()
		if err := rc.post(rc.Running(-1)[0], "/v1/admin/agents/"+a.ID+"/drain", nil, nil); err != nil {
			t.Fatalf("drain %s: %v", a.ID, err)
		}
		rc.waitAgent(t, a.ID, "drained", func(g rollAgent) bool { return g.State == "draining" && g.LiveLeases == 0 })
		step.Handoff = time.Since(start)
	}
	step.Exit = stopGracefully(t, a.Proc, 60*time.Second)
	rc.waitAgent(t, a.ID, "no longer alive", func(g rollAgent) bool { return g.State != "alive" })
	served := rc.sims[i].Served(t)
	a.Restart(t)
	start := time.Now()
	rc.waitAgent(t, a.ID, "alive again", func(g rollAgent) bool { return g.State == "alive" && g.RegisteredAt >= start.Unix() })
	WaitFor(t, 60*time.Second, a.ID+" serving the batch again", func() bool { return rc.sims[i].Served(t) > served })
	step.ToHealth = time.Since(start)
	return step
}

// roll restarts every coordinator, followers first and the leader last,
// then every agent, the first one drained through the API first.
func (rc *rollCluster) roll(t testing.TB) []rollStep {
	t.Helper()
	l, _, _ := rc.waitHealthy(t, 60*time.Second)
	order := append(rc.Running(l), l)
	var steps []rollStep
	for _, i := range order {
		var step rollStep
		step, l = rc.restartCoordinator(t, i, l)
		steps = append(steps, step)
	}
	for i := range rc.agents {
		steps = append(steps, rc.restartAgent(t, i, i == 0))
	}
	return steps
}
