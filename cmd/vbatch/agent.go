package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vbatch/vbatch/agent"
	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/agent/gpu"
	"github.com/vbatch/vbatch/internal/cliconfig"
	"github.com/vbatch/vbatch/internal/procsec"
	"github.com/vbatch/vbatch/sim"
)

// engineFlags are the per-engine flags of `vbatch agent` (and the sim ones
// of `vbatch dev`).
type engineFlags struct {
	kind         string
	vllmBin      string
	vllmArgs     string
	gpus         string
	engineURL    string
	engineAPIKey string
	simLatency   time.Duration
	simTPS       float64
	simErrorRate float64
	simMaxSeqs   int
}

func (e *engineFlags) addSim(f *pflag.FlagSet) {
	f.DurationVar(&e.simLatency, "sim-latency", 40*time.Millisecond, "sim engine: base latency per request")
	f.Float64Var(&e.simTPS, "sim-tokens-per-second", 0, "sim engine: decode speed per sequence (0: instant)")
	f.Float64Var(&e.simErrorRate, "sim-error-rate", 0, "sim engine: fraction of requests answered 500")
	f.IntVar(&e.simMaxSeqs, "sim-max-num-seqs", 256, "sim engine: concurrent sequences before requests queue")
}

func (e *engineFlags) simConfig(models []string) sim.Config {
	return sim.Config{
		Models:          models,
		Latency:         e.simLatency,
		TokensPerSecond: e.simTPS,
		ErrorRate:       e.simErrorRate,
		MaxNumSeqs:      e.simMaxSeqs,
	}
}

// build makes the engine the flags ask for. dataDir is the agent's data
// directory: its absolute path marks the agent's vLLM processes, so that
// ones left over from an earlier run are found and killed.
func (e *engineFlags) build(models []string, dataDir string, logger *slog.Logger) (engine.Engine, error) {
	switch e.kind {
	case "sim":
		return engine.NewSim(e.simConfig(models)), nil
	case "openai":
		if e.engineURL == "" {
			return nil, fmt.Errorf("--engine openai needs --engine-url")
		}
		return engine.NewOpenAI(e.engineURL, e.engineAPIKey, models, nil), nil
	case "vllm":
		if len(models) != 1 {
			return nil, fmt.Errorf("--engine vllm serves exactly one --model, got %d", len(models))
		}
		var owner string
		if dataDir != "" {
			abs, err := filepath.Abs(dataDir)
			if err != nil {
				return nil, fmt.Errorf("data dir %s: %w", dataDir, err)
			}
			owner = abs
		}
		return engine.NewVLLM(engine.VLLMConfig{
			Bin:    e.vllmBin,
			Model:  models[0],
			Args:   strings.Fields(e.vllmArgs),
			GPUs:   e.gpus,
			Logger: logger.With("logger", "vllm"),
			Owner:  owner,
		}), nil
	}
	return nil, fmt.Errorf("unknown --engine %q (vllm, openai or sim)", e.kind)
}

func agentCmd() *cobra.Command {
	cfg := agent.DefaultConfig()
	var ef engineFlags
	var configFile string
	var lf logFlags
	var join []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run an agent on a GPU host: lease chunks and run them on an engine",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cliconfig.Apply(cmd.Flags(), configFile); err != nil {
				return err
			}
			cfg.Join = splitList(join)
			if cfg.GossipKey == "" && cfg.GossipKeyFile == "" {
				cfg.GossipKey = os.Getenv("VBATCH_GOSSIP_KEY")
			}
			if cfg.TLS.Enabled() && !cmd.Flags().Changed("node-id") {
				// The node id then comes from the certificate.
				cfg.NodeID = ""
			}
			logger, _, closeLog, err := setupLogging(lf, "agent")
			if err != nil {
				return err
			}
			defer closeLog()
			// Model code the engine runs (same user) must not read this
			// process's environment or memory through /proc.
			if err := procsec.NoDump(); err != nil {
				logger.Warn("cannot make the process non-dumpable; same-user processes can read its /proc files", "err", err)
			}
			defer setupTelemetry("agent", logger)()
			hup := catchSIGHUP()
			defer signal.Stop(hup)
			if len(cfg.Models) == 0 && ef.kind == "sim" {
				cfg.Models = []string{"sim-model"}
			}
			eng, err := ef.build(cfg.Models, cfg.DataDir, logger)
			if err != nil {
				return err
			}
			var disc gpu.Discoverer
			if ef.kind == "sim" {
				disc = gpu.NewSimulated(1, int64(len(cfg.NodeID)))
			} else {
				disc = gpu.NewNVML(logger.With("logger", "gpu"))
			}
			defer disc.Close()
			a := agent.New(cfg, eng, disc, logger)
			onSIGHUP(cmd.Context(), hup, logger, cfg.TLS.Enabled(), a.ReloadTLS)
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON config file whose keys are these flag names")
	f.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "unique, stable id of this agent")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "agent state directory")
	f.StringSliceVar(&join, "join", nil, "coordinators' gossip addresses (host:port[,host:port])")
	f.StringVar(&cfg.GossipAddr, "gossip-addr", cfg.GossipAddr, "gossip (memberlist) address")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "/metrics, /health and online inference address")
	f.StringVar(&ef.kind, "engine", "vllm", "engine: vllm, openai or sim")
	f.StringArrayVar(&cfg.Models, "model", nil, "model served (repeatable)")
	f.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "requests in flight to the engine")
	f.IntVar(&cfg.MaxLeases, "max-leases", cfg.MaxLeases, "chunks held at once")
	f.IntVar(&cfg.PartLines, "part-lines", cfg.PartLines, "commit results every this many finished lines")
	f.DurationVar(&cfg.PartInterval, "part-interval", cfg.PartInterval, "commit finished results at least this often")
	f.StringVar(&ef.vllmBin, "vllm-bin", "vllm", "vllm executable")
	f.StringVar(&ef.vllmArgs, "vllm-args", "", "extra arguments for vllm serve")
	f.StringVar(&ef.gpus, "gpus", "", "GPUs for vllm (CUDA_VISIBLE_DEVICES)")
	f.StringVar(&ef.engineURL, "engine-url", "", "openai engine: base URL of the server")
	f.StringVar(&ef.engineAPIKey, "engine-api-key", "", "openai engine: API key")
	ef.addSim(f)
	addTLSFlags(f, &cfg.TLS, &cfg.ClusterName)
	addGossipKeyFlags(f, &cfg.GossipKey, &cfg.GossipKeyFile)
	addLogFlags(f, &lf)
	return cmd
}

// splitList flattens repeated and comma-separated flag values.
func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				out = append(out, a)
			}
		}
	}
	return out
}
