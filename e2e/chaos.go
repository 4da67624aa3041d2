package e2e

// The chaos harness: a cluster of three coordinators and three agents, each
// agent on its own simulator, clients that submit and poll batches over
// plain HTTP, and a seeded schedule of faults delivered as real signals to
// the real processes. The invariants are checked in chaosinv.go.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// chaosLeaseTTL is the coordinators' --lease-ttl in the chaos cluster.
const chaosLeaseTTL = 3 * time.Second

// chaosElection is at least the coordinators' election timeout (200 ms by
// default, docs/architecture.md): a frozen leader stays frozen past it.
const chaosElection = 500 * time.Millisecond

// chaosHTTP is the client every chaos request uses: a frozen process must
// not hang a client forever.
var chaosHTTP = &http.Client{Timeout: 10 * time.Second}

// chaosCluster is the cluster a schedule runs against.
type chaosCluster struct {
	*Cluster
	sims   []*Sim
	agents []*Agent

	mu     sync.Mutex
	banked []int64 // stale refusals counted by coordinator incarnations now dead
}

func startChaosCluster(t testing.TB) *chaosCluster {
	t.Helper()
	// Finished batches are compacted and their result files merged 5 s
	// after they end, so both happen under the faults and under the
	// clients' reads of those files.
	c := StartCluster(t, 3, ClusterOptions{Extra: []string{"--lease-ttl", chaosLeaseTTL.String(), "--batch-compact-after", "5s"}})
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

// leader returns the index of the coordinator the running coordinators
// name as leader, or -1 when they do not answer or do not agree.
func (cc *chaosCluster) leader() int {
	name := ""
	for _, i := range cc.Running(-1) {
		var s Status
		if err := chaosGetJSON(cc.Coords[i].URL()+"/v1/admin/cluster/status", &s); err != nil || s.Leader == "" {
			continue
		}
		if name != "" && s.Leader != name {
			return -1
		}
		name = s.Leader
	}
	for i, co := range cc.Coords {
		if co.ID == name && co.PID() != 0 {
			return i
		}
	}
	return -1
}

// waitLeader polls leader until it names one or timeout passes.
func (cc *chaosCluster) waitLeader(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := cc.leader(); l >= 0 {
			return l
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1
}

// staleOf scrapes vbatch_stale_results_refused_total from coordinator i.
func (cc *chaosCluster) staleOf(i int) (int64, error) {
	m, err := scrapeUnlabeled(chaosHTTP, cc.Coords[i].URL(), map[string]bool{staleMetric: true})
	return int64(m[staleMetric]), err
}

// staleMetric counts the results a coordinator refused for a stale lease.
const staleMetric = "vbatch_stale_results_refused_total"

// bankStale records coordinator i's counter before the process dies, since
// the counter starts again from zero on restart.
func (cc *chaosCluster) bankStale(i int) {
	if v, err := cc.staleOf(i); err == nil {
		cc.mu.Lock()
		cc.banked[i] += v
		cc.mu.Unlock()
	}
}

// staleTotal is every incarnation's refusals summed over coordinators.
func (cc *chaosCluster) staleTotal() int64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	var total int64
	for i := range cc.Coords {
		total += cc.banked[i]
		if cc.Coords[i].PID() != 0 {
			v, _ := cc.staleOf(i)
			total += v
		}
	}
	return total
}

// chaosGetJSON GETs url and decodes a 200 answer into v.
func chaosGetJSON(url string, v any) error {
	resp, err := chaosHTTP.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, bytes.TrimSpace(b))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", url, err)
	}
	return nil
}

// chaosUpload posts data as a batch input file to base and returns the id
// of the file a 2xx answer acknowledged.
func chaosUpload(base, name string, data []byte) (string, error) {
	return chaosUploadWith(chaosHTTP, base, name, data)
}

// chaosUploadWith is chaosUpload through client hc.
func chaosUploadWith(hc *http.Client, base, name string, data []byte) (string, error) {
	var body bytes.Buffer
	w := multipart.NewWriter(&body)
	_ = w.WriteField("purpose", "batch")
	fw, err := w.CreateFormFile("file", name)
	if err != nil {
		return "", err
	}
	if _, err := fw.Write(data); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	resp, err := hc.Post(base+"/v1/files", w.FormDataContentType(), &body)
	if err != nil {
		return "", fmt.Errorf("upload %s: %w", name, err)
	}
	defer resp.Body.Close()
	var f struct {
		ID string `json:"id"`
	}
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", fmt.Errorf("upload %s: status %d: %s", name, resp.StatusCode, bytes.TrimSpace(b))
	}
	if err := json.NewDecoder(resp.Body).Decode(&f); err != nil || f.ID == "" {
		return "", fmt.Errorf("upload %s: acknowledged without a file id: %v", name, err)
	}
	return f.ID, nil
}

// chaosBatch is the part of a batch object the checker reads.
type chaosBatch struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	OutputFileID  string `json:"output_file_id"`
	ErrorFileID   string `json:"error_file_id"`
	RequestCounts struct {
		Total     int64 `json:"total"`
		Completed int64 `json:"completed"`
		Failed    int64 `json:"failed"`
	} `json:"request_counts"`
}

// chaosCreateBatch creates a 24h chat-completions batch over fileID.
func chaosCreateBatch(base, fileID string) (*chaosBatch, error) {
	req, _ := json.Marshal(map[string]string{
		"input_file_id": fileID, "endpoint": "/v1/chat/completions", "completion_window": "24h",
	})
	resp, err := chaosHTTP.Post(base+"/v1/batches", "application/json", bytes.NewReader(req))
	if err != nil {
		return nil, fmt.Errorf("create batch on %s: %w", fileID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("create batch on %s: status %d: %s", fileID, resp.StatusCode, bytes.TrimSpace(b))
	}
	var b chaosBatch
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		return nil, fmt.Errorf("create batch on %s: decode: %w", fileID, err)
	}
	return &b, nil
}

// chaosGetBatch reads batch id with a consistent read, so that statuses
// observed by any client through any coordinator form one history.
func chaosGetBatch(base, id string) (*chaosBatch, error) {
	var b chaosBatch
	if err := chaosGetJSON(base+"/v1/batches/"+id+"?consistent=true", &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// chaosContent downloads file id from base.
func chaosContent(base, id string) ([]byte, error) {
	resp, err := chaosHTTP.Get(base + "/v1/files/" + id + "/content")
	if err != nil {
		return nil, fmt.Errorf("content %s: %w: %w", id, errUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("content %s: read: %w: %w", id, errUnavailable, err)
	}
	if resp.StatusCode >= 500 {
		return nil, fmt.Errorf("content %s: %w: status %d: %s", id, errUnavailable, resp.StatusCode, bytes.TrimSpace(b))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("content %s: status %d: %s", id, resp.StatusCode, bytes.TrimSpace(b))
	}
	return b, nil
}

// errUnavailable marks an answer that says "not now" (5xx, or no answer):
// the node may still be electing or catching up after the faults.
var errUnavailable = errors.New("unavailable")

// chaosContentSettled is chaosContent retried for up to 30 s while the node
// is unavailable, so a node restarted just before the check is not taken
// for one that lost the file; any other answer (a 404, wrong bytes) counts.
func chaosContentSettled(base, id string) ([]byte, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := chaosContent(base, id)
		if err == nil || !errors.Is(err, errUnavailable) || time.Now().After(deadline) {
			return b, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// chaosLines returns n chat lines whose custom_ids carry prefix.
func chaosLines(prefix string, n int) []byte {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `{"custom_id":"%s-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"q %d"}],"max_tokens":8}}`+"\n", prefix, i, i)
	}
	return b.Bytes()
}

func sum256(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x", s[:])
}

// fault is one injected fault, as the report lists it.
type fault struct {
	Kind   string
	Target string
	At     time.Duration // from the start of the fault window
	Held   time.Duration // how long the target was down or frozen
}

// faultKinds are the faults a schedule draws from.
var faultKinds = []string{
	"kill-leader", "kill-follower", "kill-agent", "stop-agent", "stop-leader", "kill-all-coordinators",
	"kill-engine", "wipe-follower",
}

// injector runs one schedule's faults on the test goroutine.
type injector struct {
	t     testing.TB
	cc    *chaosCluster
	rng   *rand.Rand
	start time.Time
	log   []fault
}

// between draws a duration uniformly in [lo, hi).
func (in *injector) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(in.rng.Int64N(int64(hi-lo)))
}

// inject draws and runs one fault, returning once the target is running
// again (the cluster may still be electing).
func (in *injector) inject() {
	in.t.Helper()
	kind := faultKinds[in.rng.IntN(len(faultKinds))]
	f := fault{Kind: kind, At: time.Since(in.start)}
	cc := in.cc
	switch kind {
	case "kill-leader", "kill-follower", "stop-leader", "wipe-follower":
		l := cc.waitLeader(15 * time.Second)
		if l < 0 {
			in.t.Fatalf("no leader before %s\n%s", kind, cc.Logs())
		}
		target := l
		if kind == "kill-follower" || kind == "wipe-follower" {
			others := cc.Running(l)
			target = others[in.rng.IntN(len(others))]
		}
		co := cc.Coords[target]
		f.Target = co.ID
		if kind == "stop-leader" {
			f.Held = in.between(chaosLeaseTTL+chaosElection, 2*chaosLeaseTTL)
			in.freeze(co.Proc, f.Held)
			break
		}
		f.Held = in.between(200*time.Millisecond, 4*time.Second)
		cc.bankStale(target)
		co.Kill()
		if kind == "wipe-follower" {
			// A replaced disk: the node comes back under its id and
			// addresses with nothing (docs/operations.md).
			if err := os.RemoveAll(co.DataDir); err != nil {
				in.t.Fatalf("wipe %s: %v", co.ID, err)
			}
		}
		time.Sleep(f.Held)
		co.Restart(in.t)
	case "kill-agent":
		a := cc.agents[in.rng.IntN(len(cc.agents))]
		f.Target = a.ID
		f.Held = in.between(200*time.Millisecond, 4*time.Second)
		a.Kill()
		time.Sleep(f.Held)
		a.Restart(in.t)
	case "stop-agent":
		a := cc.agents[in.rng.IntN(len(cc.agents))]
		f.Target = a.ID
		f.Held = in.between(chaosLeaseTTL+time.Second, 2*chaosLeaseTTL)
		in.freeze(a.Proc, f.Held)
	case "kill-engine":
		// The engine dies under the agent's requests: a crash the lease
		// reports, and, repeated on a chunk, isolation of its lines.
		i := in.rng.IntN(len(cc.sims))
		s := cc.sims[i]
		f.Target = fmt.Sprintf("sim%d", i+1)
		f.Held = in.between(200*time.Millisecond, 4*time.Second)
		s.Kill()
		time.Sleep(f.Held)
		s.Restart(in.t)
	case "kill-all-coordinators":
		f.Target = "c1,c2,c3"
		f.Held = in.between(200*time.Millisecond, 3*time.Second)
		for i, co := range cc.Coords {
			cc.bankStale(i)
			co.Kill()
		}
		time.Sleep(f.Held)
		for _, co := range cc.Coords {
			co.Restart(in.t)
		}
	}
	in.log = append(in.log, f)
}

// freeze sends SIGSTOP, waits d, then SIGCONT.
func (in *injector) freeze(p *Proc, d time.Duration) {
	in.t.Helper()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		in.t.Fatalf("SIGSTOP %s: %v; the end of its log:\n%s", p.Name, err, p.LogTail(40))
	}
	time.Sleep(d)
	if err := p.Signal(syscall.SIGCONT); err != nil {
		in.t.Fatalf("SIGCONT %s: %v; the end of its log:\n%s", p.Name, err, p.LogTail(40))
	}
}
