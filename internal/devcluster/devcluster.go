// Package devcluster runs a whole vbatch cluster in one process: three
// coordinators and sim agents, on loopback unless BindHost says otherwise.
// It backs `vbatch dev`, the demo and the benchmarks.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/vbatch/vbatch/agent"
	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/agent/gpu"
	"github.com/vbatch/vbatch/coordinator"
	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/monitoring"
	"github.com/vbatch/vbatch/sim"
)

// Model is the model the dev cluster's agents serve.
const Model = "sim-model"

// StopTimeout bounds a clean stop.
const StopTimeout = 30 * time.Second

// Config describes a dev cluster.
type Config struct {
	// BasePort: coordinator i listens on BasePort+100*i (HTTP), +1 (RPC),
	// +2 (raft), +3 (gossip); agent j on BasePort+300+10*j (HTTP) and +1
	// (gossip).
	BasePort    int
	DataDir     string
	Agents      int
	Concurrency int
	Sim         sim.Config
	LogOut      io.Writer
	LogLevel    string
	// ChunkSize overrides the coordinators' chunk size when set.
	ChunkSize int
	// BindHost is the host the HTTP listeners bind: the coordinators' API
	// (which serves /metrics) and the agents' metrics listener. Empty
	// means 127.0.0.1. Set it (e.g. "0.0.0.0") when something outside
	// the host's loopback must reach them, such as Prometheus in a Docker
	// container. RPC, raft and gossip stay on 127.0.0.1 whatever it is:
	// they are unauthenticated plain text in a dev cluster. Off loopback
	// the agents serve online inference to loopback callers only (their
	// coordinators), as the listener carries no key, unless
	// InsecureNoAuth without a RootKey; so a non-loopback BindHost must be an unspecified
	// address (0.0.0.0 or ::), which loopback reaches too.
	BindHost string
	// RootKey is the coordinators' admin API key. A non-loopback BindHost
	// needs it, or InsecureNoAuth.
	RootKey string
	// InsecureNoAuth lets the coordinators serve a non-loopback BindHost
	// without any API key. With no RootKey it also opens the agents'
	// online inference to every caller (see BindHost).
	InsecureNoAuth bool
}

// Node names one process of the cluster and its addresses. HTTP is an
// address this host can dial (127.0.0.1 when the listener binds every
// interface); HTTPBind is the address the listener binds.
type Node struct {
	ID                      string
	HTTP, RPC, Raft, Gossip string
	HTTPBind                string
}

// Cluster is a running dev cluster.
type Cluster struct {
	Coordinators []Node
	Agents       []Node

	coords []*coordinator.Coordinator
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []error // agents' Run errors, as they ended
}

// Start starts the coordinators and agents and returns once the cluster has
// a leader.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.LogOut == nil {
		cfg.LogOut = io.Discard
	}
	if cfg.Agents < 0 {
		return nil, errors.New("agents must not be negative")
	}
	if err := cfg.checkBindHost(); err != nil {
		return nil, err
	}
	cl := &Cluster{}
	var join []string
	for i := 0; i < 3; i++ {
		p := cfg.BasePort + 100*i
		n := Node{ID: fmt.Sprintf("c%d", i+1), HTTP: cfg.dialHTTP(p), HTTPBind: cfg.bindHTTP(p), RPC: addr(p + 1), Raft: addr(p + 2), Gossip: addr(p + 3)}
		cl.Coordinators = append(cl.Coordinators, n)
		join = append(join, n.Gossip)
	}
	for i, n := range cl.Coordinators {
		cc := cfg.coordinatorConfig(n, join)
		logger := monitoring.NewLogger(cfg.LogOut, cfg.LogLevel, "coordinator")
		c, err := coordinator.Start(cc, logger, cfg.LogOut)
		if err != nil {
			cl.stopCoordinators()
			return nil, fmt.Errorf("start coordinator %d: %w", i+1, err)
		}
		cl.coords = append(cl.coords, c)
	}
	if err := cl.waitLeader(ctx, 30*time.Second); err != nil {
		cl.stopCoordinators()
		return nil, err
	}
	actx, cancel := context.WithCancel(context.Background())
	cl.cancel = cancel
	for j := 0; j < cfg.Agents; j++ {
		p := cfg.BasePort + 300 + 10*j
		n := Node{ID: fmt.Sprintf("agent-%d", j+1), HTTP: cfg.dialHTTP(p), HTTPBind: cfg.bindHTTP(p), Gossip: addr(p + 1)}
		cl.Agents = append(cl.Agents, n)
		ac := cfg.agentConfig(n, join)
		sc := cfg.Sim
		sc.Models = []string{Model}
		logger := monitoring.NewLogger(cfg.LogOut, cfg.LogLevel, "agent").With("node_id", n.ID)
		a := agent.New(ac, engine.NewSim(sc), gpu.NewSimulated(1, int64(j+1)), logger)
		ended := make(chan struct{})
		cl.wg.Add(1)
		go func() {
			defer cl.wg.Done()
			defer close(ended)
			if err := a.Run(actx); err != nil {
				logger.Error("agent stopped", "err", err)
				cl.mu.Lock()
				cl.errs = append(cl.errs, fmt.Errorf("agent %s: %w", n.ID, err))
				cl.mu.Unlock()
			}
		}()
		// Ready means every agent serves: one that cannot bind its
		// address fails the start instead of being missed.
		if err := waitListening(ctx, n.HTTP, ended, 30*time.Second); err != nil {
			err = errors.Join(fmt.Errorf("agent %s: %w", n.ID, err), cl.Stop(context.Background()))
			return nil, err
		}
	}
	return cl, nil
}

// waitListening waits until the agent at addr answers its health check
// (a connection alone could be another process holding the port), the
// agent ends (ended closes) or timeout passes.
func waitListening(ctx context.Context, addr string, ended <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get("http://" + addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("health: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not serving on %s after %s: %w", addr, timeout, err)
		}
		select {
		case <-ended:
			return fmt.Errorf("stopped before serving on %s", addr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// coordinatorConfig is the configuration of coordinator n.
func (cfg Config) coordinatorConfig(n Node, join []string) coordinator.Config {
	cc := coordinator.DefaultConfig()
	cc.NodeID, cc.DataDir = n.ID, filepath.Join(cfg.DataDir, n.ID)
	cc.HTTPAddr, cc.RPCAddr, cc.RaftAddr, cc.GossipAddr = n.HTTPBind, n.RPC, n.Raft, n.Gossip
	cc.Join, cc.BootstrapExpect = join, 3
	cc.RootKey, cc.InsecureNoAuth = cfg.RootKey, cfg.InsecureNoAuth
	if cfg.ChunkSize > 0 {
		cc.ChunkSize = cfg.ChunkSize
	}
	return cc
}

// agentConfig is the configuration of agent n. Its coordinators, in
// this process, reach it at n.HTTP, which this host can dial; off
// loopback it serves online inference to loopback callers only, unless
// auth is waived.
func (cfg Config) agentConfig(n Node, join []string) agent.Config {
	ac := agent.DefaultConfig()
	ac.NodeID, ac.DataDir = n.ID, filepath.Join(cfg.DataDir, n.ID)
	ac.Join, ac.GossipAddr, ac.MetricsAddr = join, n.Gossip, n.HTTPBind
	ac.AdvertiseAddr = n.HTTP
	ac.OnlineFromLoopbackOnly = !netutil.IsLoopback(n.HTTPBind) && !cfg.noAuth()
	ac.Models = []string{Model}
	if cfg.Concurrency > 0 {
		ac.Concurrency = cfg.Concurrency
	}
	return ac
}

// noAuth reports whether the coordinators serve without any key: auth
// waived and no root key given (a key, if given, is still required).
func (cfg Config) noAuth() bool { return cfg.InsecureNoAuth && cfg.RootKey == "" }

// checkBindHost refuses a BindHost the agents cannot serve with online
// inference kept to loopback: one non-loopback address, which loopback
// connections cannot reach.
func (cfg Config) checkBindHost() error {
	if cfg.BindHost == "" || cfg.noAuth() || netutil.IsLoopback(cfg.bindHTTP(0)) {
		return nil
	}
	if ip := net.ParseIP(cfg.BindHost); ip != nil && ip.IsUnspecified() {
		return nil
	}
	return fmt.Errorf("bind host %s: off loopback the agents serve online inference to their coordinators over loopback only, which a listener bound to %s alone cannot take; bind 0.0.0.0 (or ::) instead", cfg.BindHost, cfg.BindHost)
}

// bindHTTP is the address an HTTP listener on port binds.
func (cfg Config) bindHTTP(port int) string {
	if cfg.BindHost == "" {
		return addr(port)
	}
	return net.JoinHostPort(cfg.BindHost, fmt.Sprint(port))
}

// dialHTTP is an address of the HTTP listener on port that this host can
// dial: loopback when the listener binds every interface.
func (cfg Config) dialHTTP(port int) string {
	if ip := net.ParseIP(cfg.BindHost); cfg.BindHost == "" || (ip != nil && ip.IsUnspecified()) {
		return addr(port)
	}
	return cfg.bindHTTP(port)
}

// URLs are the coordinators' API base URLs.
func (cl *Cluster) URLs() []string {
	var out []string
	for _, n := range cl.Coordinators {
		out = append(out, "http://"+n.HTTP)
	}
	return out
}

func (cl *Cluster) waitLeader(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, c := range cl.coords {
			if c.IsLeader() {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("no raft leader after %s", timeout)
}

// Stop stops the agents (releasing their leases), then the coordinators.
func (cl *Cluster) Stop(ctx context.Context) error {
	if cl.cancel != nil {
		cl.cancel()
	}
	done := make(chan struct{})
	go func() { cl.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	cl.mu.Lock()
	errs := append([]error(nil), cl.errs...)
	cl.mu.Unlock()
	errs = append(errs, cl.stopCoordinators())
	return errors.Join(errs...)
}

func (cl *Cluster) stopCoordinators() error {
	var errs []error
	for _, c := range cl.coords {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
