package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/internal/devcluster"
	"github.com/vbatch/vbatch/internal/netutil"
)

func devCmd() *cobra.Command {
	var cfg devcluster.Config
	var ef engineFlags
	var logLevel, logPath string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster in one process: three coordinators and sim agents on loopback",
		Long: "Run a local cluster in one process: three coordinators and sim agents.\n\n" +
			"Everything listens on 127.0.0.1 unless --bind-host is set. --bind-host 0.0.0.0 makes the\n" +
			"coordinators' API (and /metrics) and the agents' metrics listeners reachable from other\n" +
			"interfaces, e.g. from the Docker containers of deploy/docker-compose.monitoring.yml; RPC,\n" +
			"raft and gossip stay on loopback. Off loopback the API needs --root-key (or VBATCH_ROOT_KEY),\n" +
			"a key-protected cluster takes only 0.0.0.0 or :: as --bind-host, and the agents then answer\n" +
			"online inference from loopback only (the coordinators reach them there); --insecure-no-auth\n" +
			"without a key serves the API, and the agents' online inference, to anyone.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.RootKey == "" {
				cfg.RootKey = os.Getenv("VBATCH_ROOT_KEY")
			}
			if cfg.InsecureNoAuth && cfg.RootKey == "" && cfg.BindHost != "" && !netutil.IsLoopback(net.JoinHostPort(cfg.BindHost, "0")) {
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: --insecure-no-auth: the API on %s accepts every request without a key; anyone who reaches this host can submit, read and delete batches\n", cfg.BindHost)
			}
			if cfg.DataDir == "" {
				dir, err := os.MkdirTemp("", "vbatch-dev-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				cfg.DataDir = dir
			}
			if logPath == "" {
				logPath = filepath.Join(cfg.DataDir, "vbatch-dev.log")
			}
			if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
				return err
			}
			logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return err
			}
			defer logf.Close()
			cfg.Sim = ef.simConfig([]string{devcluster.Model})
			cfg.LogOut, cfg.LogLevel = logf, logLevel
			cl, err := devcluster.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, c := range cl.Coordinators {
				fmt.Fprintf(out, "coordinator %s  api http://%s%s  rpc %s  raft %s  gossip %s\n", c.ID, c.HTTP, bound(c), c.RPC, c.Raft, c.Gossip)
			}
			for _, a := range cl.Agents {
				fmt.Fprintf(out, "agent       %s  http://%s%s  gossip %s  engine sim (model %s)\n", a.ID, a.HTTP, bound(a), a.Gossip, devcluster.Model)
			}
			fmt.Fprintf(out, "logs: %s\n", logPath)
			fmt.Fprintf(out, "vbatch dev ready: export VBATCH_ADDR=http://%s (%s)\n", cl.Coordinators[0].HTTP, strings.Join(cl.URLs(), " "))
			<-cmd.Context().Done()
			fmt.Fprintln(out, "vbatch dev stopping")
			ctx, cancel := context.WithTimeout(context.Background(), devcluster.StopTimeout)
			defer cancel()
			return cl.Stop(ctx)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.BasePort, "base-port", 8000, "coordinator i uses base+100*i (+1 rpc, +2 raft, +3 gossip); agents follow from base+300")
	f.StringVar(&cfg.DataDir, "data-dir", "", "data directory (default: a temporary one, removed on exit)")
	f.IntVar(&cfg.Agents, "agents", 2, "sim agents to run")
	f.IntVar(&cfg.Concurrency, "concurrency", 64, "each agent's requests in flight")
	ef.addSim(f)
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logPath, "log-file", "", "append the JSON logs to this file (default: vbatch-dev.log in the data directory); /var/log/vbatch/dev.log is shipped to Loki by deploy/alloy")
	f.StringVar(&cfg.BindHost, "bind-host", "", "host the HTTP listeners (coordinator API and /metrics, agent metrics) bind, e.g. 0.0.0.0 for a Dockerised Prometheus (default 127.0.0.1; RPC, raft and gossip always stay on loopback)")
	f.StringVar(&cfg.RootKey, "root-key", "", "admin API key, needed when --bind-host is not loopback (or VBATCH_ROOT_KEY)")
	f.BoolVar(&cfg.InsecureNoAuth, "insecure-no-auth", false, "serve a non-loopback --bind-host without any API key (anyone who reaches the host controls the cluster and its agents' online inference)")
	return cmd
}

// bound notes where n's HTTP listener binds when that is not the address
// printed to dial it.
func bound(n devcluster.Node) string {
	if n.HTTPBind == n.HTTP {
		return ""
	}
	return " (listening on " + n.HTTPBind + ")"
}
