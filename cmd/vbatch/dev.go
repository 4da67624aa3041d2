package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/internal/devcluster"
)

func devCmd() *cobra.Command {
	var cfg devcluster.Config
	var ef engineFlags
	var logLevel string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster in one process: three coordinators and sim agents on loopback",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.DataDir == "" {
				dir, err := os.MkdirTemp("", "vbatch-dev-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				cfg.DataDir = dir
			}
			logPath := filepath.Join(cfg.DataDir, "vbatch-dev.log")
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
				fmt.Fprintf(out, "coordinator %s  api http://%s  rpc %s  raft %s  gossip %s\n", c.ID, c.HTTP, c.RPC, c.Raft, c.Gossip)
			}
			for _, a := range cl.Agents {
				fmt.Fprintf(out, "agent       %s  http://%s  gossip %s  engine sim (model %s)\n", a.ID, a.HTTP, a.Gossip, devcluster.Model)
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
	return cmd
}
