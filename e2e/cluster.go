package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Coordinator is one coordinator process and its addresses.
type Coordinator struct {
	ID                      string
	HTTP, RPC, Raft, Gossip string
	DataDir                 string
	// Scheme is "https" when the cluster runs with TLS, else "http".
	Scheme string
	*Proc
}

// URL is the coordinator's API base URL.
func (c *Coordinator) URL() string {
	if c.Scheme == "" {
		return "http://" + c.HTTP
	}
	return c.Scheme + "://" + c.HTTP
}

// Cluster is a set of coordinator processes on loopback.
type Cluster struct {
	t      testing.TB
	Dir    string
	Bin    string
	Coords []*Coordinator
	// HTTP is the client the harness uses for the API; nil means
	// http.DefaultClient. TLS clusters set one that trusts their CA.
	HTTP *http.Client
	// AgentFlags returns extra flags for an agent started by StartAgent
	// (certificates, gossip key); nil means none.
	AgentFlags func(id string) []string
}

// ClusterOptions tunes StartCluster.
type ClusterOptions struct {
	// Extra are flags added to every coordinator.
	Extra []string
	// PerNode, if set, returns flags for coordinator i only (its own
	// certificate, for instance).
	PerNode func(i int) []string
	// HTTPS makes the harness reach the API over https with HTTP.
	HTTPS bool
	HTTP  *http.Client
}

// httpc is the harness's API client.
func (c *Cluster) httpc() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// StartCluster starts n coordinators that bootstrap together and waits
// until they agree on a leader and each knows all n servers.
func StartCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	return StartClusterDirs(t, n, opts, nil)
}

// StartClusterDirs is StartCluster with chosen data dirs: dataDirs[i], when
// set, is coordinator i's data dir (for instance a small filesystem the test
// mounted); an empty entry gets a fresh dir as StartCluster gives. Every
// coordinator gets the same flags as StartCluster's.
func StartClusterDirs(t testing.TB, n int, opts ClusterOptions, dataDirs []string) *Cluster {
	t.Helper()
	bin := Binaries(t)
	dir := t.TempDir()
	ports := FreePorts(t, 4*n)
	c := &Cluster{t: t, Dir: dir, Bin: filepath.Join(bin, "vbatch"), HTTP: opts.HTTP}
	var gossip []string
	for i := 0; i < n; i++ {
		gossip = append(gossip, fmt.Sprintf("127.0.0.1:%d", ports[4*i+3]))
	}
	for i := 0; i < n; i++ {
		co := &Coordinator{
			ID:      fmt.Sprintf("c%d", i+1),
			HTTP:    fmt.Sprintf("127.0.0.1:%d", ports[4*i]),
			RPC:     fmt.Sprintf("127.0.0.1:%d", ports[4*i+1]),
			Raft:    fmt.Sprintf("127.0.0.1:%d", ports[4*i+2]),
			Gossip:  gossip[i],
			DataDir: filepath.Join(dir, fmt.Sprintf("c%d", i+1)),
		}
		if opts.HTTPS {
			co.Scheme = "https"
		}
		if i < len(dataDirs) && dataDirs[i] != "" {
			co.DataDir = dataDirs[i]
		}
		args := []string{"coordinator",
			"--node-id", co.ID, "--data-dir", co.DataDir,
			"--http-addr", co.HTTP, "--rpc-addr", co.RPC, "--raft-addr", co.Raft, "--gossip-addr", co.Gossip,
			"--bootstrap-expect", fmt.Sprint(n), "--join", strings.Join(gossip, ","),
		}
		args = append(args, opts.Extra...)
		if opts.PerNode != nil {
			args = append(args, opts.PerNode(i)...)
		}
		co.Proc = StartProc(t, dir, co.ID, c.Bin, args...)
		c.Coords = append(c.Coords, co)
	}
	c.WaitLeader(30 * time.Second)
	c.WaitVoters(n, 30*time.Second)
	return c
}

// WaitVoters waits until every running coordinator's raft configuration
// lists n servers. A node can name the leader (it heard a heartbeat) before
// the leader's entries brought it the configuration, and until then it
// refuses uploads: it cannot tell what a majority is.
func (c *Cluster) WaitVoters(n int, timeout time.Duration) {
	c.t.Helper()
	WaitFor(c.t, timeout, fmt.Sprintf("every running coordinator to know %d servers", n), func() bool {
		for i, co := range c.Coords {
			if co.PID() == 0 {
				continue
			}
			s, err := c.StatusOf(i)
			if err != nil || len(s.Servers) != n {
				return false
			}
		}
		return true
	})
}

// Status is the body of GET /v1/admin/cluster/status.
type Status struct {
	Leader  string `json:"leader"`
	Servers []struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		LastIndex uint64 `json:"last_index"`
	} `json:"servers"`
}

// StatusOf asks coordinator i for the cluster status.
func (c *Cluster) StatusOf(i int) (*Status, error) {
	resp, err := c.httpc().Get(c.Coords[i].URL() + "/v1/admin/cluster/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	var s Status
	return &s, json.NewDecoder(resp.Body).Decode(&s)
}

// WaitLeader waits until every running coordinator reports the same leader
// and returns its index in Coords.
func (c *Cluster) WaitLeader(timeout time.Duration) int {
	c.t.Helper()
	leader := -1
	WaitFor(c.t, timeout, "a leader every running coordinator agrees on", func() bool {
		name := ""
		for i, co := range c.Coords {
			if co.PID() == 0 {
				continue
			}
			s, err := c.StatusOf(i)
			if err != nil || s.Leader == "" || (name != "" && s.Leader != name) {
				return false
			}
			name = s.Leader
		}
		for i, co := range c.Coords {
			if co.ID == name && co.PID() != 0 {
				leader = i
				return true
			}
		}
		return false
	})
	return leader
}

// Running returns the indexes of running coordinators other than skip.
func (c *Cluster) Running(skip int) []int {
	var out []int
	for i, co := range c.Coords {
		if i != skip && co.PID() != 0 {
			out = append(out, i)
		}
	}
	return out
}

// Logs returns every coordinator's log, for failure messages.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, co := range c.Coords {
		fmt.Fprintf(&b, "==== %s ====\n%s\n", co.ID, tail(co.Log(), 60))
	}
	return b.String()
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

func decodeBody(resp *http.Response, v any) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
