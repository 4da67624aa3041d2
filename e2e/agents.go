package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sim is a standalone `vbatch sim` process serving sim-model.
type Sim struct {
	Addr string
	*Proc
}

// StartSim starts a simulator with extra flags.
func (c *Cluster) StartSim(t testing.TB, name string, extra ...string) *Sim {
	t.Helper()
	port := FreePorts(t, 1)[0]
	s := &Sim{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := append([]string{"sim", "--addr", s.Addr, "--model", "sim-model"}, extra...)
	s.Proc = StartProc(t, c.Dir, name, c.Bin, args...)
	WaitFor(t, 10*time.Second, name+" healthy", func() bool {
		resp, err := http.Get("http://" + s.Addr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

// Served returns vllm:request_success_total summed over its series.
func (s *Sim) Served(t testing.TB) int64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr + "/metrics")
	if err != nil {
		t.Fatalf("sim metrics: %v", err)
	}
	defer resp.Body.Close()
	var total float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "vllm:request_success_total") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				total += v
			}
		}
	}
	return int64(total)
}

// Agent is a `vbatch agent` process.
type Agent struct {
	ID, HTTP, Gossip string
	*Proc
}

// StartAgent starts an agent that joins the cluster with the given engine
// flags (for example --engine openai --engine-url ...). It serves
// sim-model unless the flags name models (--model).
func (c *Cluster) StartAgent(t testing.TB, id string, engineArgs ...string) *Agent {
	t.Helper()
	ports := FreePorts(t, 2)
	a := &Agent{ID: id, HTTP: fmt.Sprintf("127.0.0.1:%d", ports[0]), Gossip: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	var join []string
	for _, co := range c.Coords {
		join = append(join, co.Gossip)
	}
	args := []string{"agent", "--node-id", id, "--data-dir", filepath.Join(c.Dir, id),
		"--join", strings.Join(join, ","), "--gossip-addr", a.Gossip, "--metrics-addr", a.HTTP}
	if !slices.Contains(engineArgs, "--model") {
		args = append(args, "--model", "sim-model")
	}
	args = append(args, engineArgs...)
	if c.AgentFlags != nil {
		args = append(args, c.AgentFlags(id)...)
	}
	a.Proc = StartProc(t, c.Dir, id, c.Bin, args...)
	return a
}

// WaitAgents waits until the cluster lists n alive agents.
func (c *Cluster) WaitAgents(t testing.TB, n int) {
	t.Helper()
	WaitFor(t, 30*time.Second, fmt.Sprintf("%d alive agents", n), func() bool {
		resp, err := c.httpc().Get(c.Coords[c.Running(-1)[0]].URL() + "/v1/models")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && c.aliveAgents() >= n
	})
}

func (c *Cluster) aliveAgents() int {
	resp, err := c.httpc().Get(c.Coords[c.Running(-1)[0]].URL() + "/v1/admin/agents")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var body struct {
		Data []struct {
			State string `json:"state"`
		} `json:"data"`
	}
	if err := decodeBody(resp, &body); err != nil {
		return 0
	}
	n := 0
	for _, a := range body.Data {
		if a.State == "alive" {
			n++
		}
	}
	return n
}
