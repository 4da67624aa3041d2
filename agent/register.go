package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/monitoring"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// This file is how the agent makes itself known: gossip membership (to
// find coordinators) and registration with them.

// register records the agent with a coordinator, retrying across
// coordinators until one answers or ctx ends, and adopts the lease timings
// it answers with.
func (a *Agent) register(ctx context.Context) error {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	return a.registerLocked(ctx)
}

// reregister registers again unless another registration succeeded since
// the caller saw generation seen: lease workers that all hear "unknown
// agent" at once register once.
func (a *Agent) reregister(ctx context.Context, seen uint64) error {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	if a.regGen.Load() != seen {
		return nil
	}
	return a.registerLocked(ctx)
}

func (a *Agent) registerLocked(ctx context.Context) error {
	gpus := a.discoverGPUs()
	ag := &vbatchv1.Agent{
		Id:        a.id,
		RpcAddr:   a.rpcAddr,
		Models:    a.models,
		Gpus:      gpus,
		MaxLeases: uint32(a.cfg.MaxLeases),
		Draining:  a.draining.Load(),
	}
	var resp *vbatchv1.RegisterResponse
	err := a.coords.call(ctx, "register", 30*time.Second, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		r, err := c.Register(ctx, connect.NewRequest(&vbatchv1.RegisterRequest{Agent: ag}))
		if err == nil {
			resp = r.Msg
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.id, err)
	}
	if resp.LeaseTtlMs > 0 {
		a.leaseTTL.Store(int64(time.Duration(resp.LeaseTtlMs) * time.Millisecond))
	}
	if resp.RenewIntervalMs > 0 {
		a.renewInterval.Store(int64(time.Duration(resp.RenewIntervalMs) * time.Millisecond))
	}
	a.regGen.Add(1)
	a.log.Info("registered", "gpus", len(gpus), "lease_ttl_ms", resp.LeaseTtlMs, "draining", ag.Draining)
	return nil
}

// logRegisterError logs a failed registration: at error level when the
// coordinators refuse this agent's node id (it is a coordinator's), which
// needs an operator, else as a warning.
func (a *Agent) logRegisterError(msg string, err error) {
	if connect.CodeOf(err) == connect.CodeAlreadyExists {
		a.log.Error(msg+": the coordinators refuse this agent's node id; give it its own --node-id", "err", err)
		return
	}
	a.log.Warn(msg, "err", err)
}

// startGossip joins the gossip pool as an agent and keeps rejoining the
// Join addresses whenever no coordinator is in view.
func (a *Agent) startGossip(ctx context.Context) error {
	n := len(a.discoverGPUs())
	keys, err := gossip.KeysFromFlags(a.cfg.GossipKey, a.cfg.GossipKeyFile)
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.id, err)
	}
	keyring := ""
	if a.cfg.DataDir != "" {
		keyring = gossip.KeyringPath(a.cfg.DataDir)
	}
	pool, err := gossip.Start(gossip.Config{
		Name:        a.id,
		BindAddr:    a.cfg.GossipAddr,
		Meta:        gossip.Meta{Role: gossip.RoleAgent, RPCAddr: a.rpcAddr, Models: a.models, GPUs: n},
		Logger:      a.log,
		Keys:        keys,
		KeyringFile: keyring,
		Label:       a.cfg.ClusterName,
	})
	if err != nil {
		return fmt.Errorf("agent %s: %w", a.id, err)
	}
	a.pool = pool
	a.metrics.registry.MustRegister(monitoring.NewGossipNameConflicts(pool.NameConflicts))
	// One join before anything else: an agent whose id the pool already
	// lists at another address (a cloned host, a coordinator's id) would
	// run invisible to the pool, its twin taking its leases' liveness.
	// Other failures (no coordinator up yet) are joinLoop's to retry.
	if _, err := pool.Join(a.cfg.Join); errors.Is(err, gossip.ErrNameConflict) {
		return fmt.Errorf("agent %s: %w", a.id, err)
	}
	go a.joinLoop(ctx)
	return nil
}

// joinLoop joins the Join addresses with back-off until a coordinator is
// in view, and again whenever none is (they all restarted, say).
func (a *Agent) joinLoop(ctx context.Context) {
	wait := 500 * time.Millisecond
	for ctx.Err() == nil {
		if len(a.gossipCoordinators()) > 0 {
			wait = 500 * time.Millisecond
			sleepCtx(ctx, 2*time.Second)
			continue
		}
		if _, err := a.pool.Join(a.cfg.Join); err != nil {
			level := slog.LevelWarn
			if errors.Is(err, gossip.ErrNameConflict) {
				// The pool lists this agent's id at another node: nothing
				// reaches this one until that node goes.
				level = slog.LevelError
			}
			a.log.Log(ctx, level, "join gossip", "addrs", a.cfg.Join, "err", err, "retry_in", wait)
			sleepCtx(ctx, wait)
			wait = min(2*wait, 15*time.Second)
			continue
		}
		// Joined: the coordinators appear once gossip has converged.
		sleepCtx(ctx, wait)
	}
}

// gossipCoordinators lists the RPC addresses of live coordinators.
func (a *Agent) gossipCoordinators() []string {
	var out []string
	for _, m := range a.pool.MembersWithRole(gossip.RoleCoordinator) {
		if m.Meta.RPCAddr != "" {
			out = append(out, m.Meta.RPCAddr)
		}
	}
	return out
}

// advertised is the address peers reach a listener at: the configured
// host (or this host's private IP when unspecified) with the bound port.
func advertised(listen string, bound net.Addr) (string, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("agent address %q: %w", listen, err)
	}
	tcp, ok := bound.(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("agent address %q: not TCP: %s", listen, bound)
	}
	addr, err := netutil.Advertise(net.JoinHostPort(host, fmt.Sprint(tcp.Port)))
	if err != nil {
		return "", fmt.Errorf("agent advertise %q: %w", listen, err)
	}
	return addr, nil
}
