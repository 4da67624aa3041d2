package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/sim"
)

func simCmd() *cobra.Command {
	var cfg sim.Config
	var models []string
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the vLLM-compatible simulator",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Models = models
			return sim.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:8100", "listen address")
	f.StringArrayVar(&models, "model", []string{"sim-model"}, "model served (repeatable)")
	f.DurationVar(&cfg.Latency, "latency", 40*time.Millisecond, "base latency per request")
	f.Float64Var(&cfg.TokensPerSecond, "tokens-per-second", 0, "decode speed per sequence (0: instant)")
	f.IntVar(&cfg.MaxNumSeqs, "max-num-seqs", 256, "concurrent sequences before requests queue")
	f.Float64Var(&cfg.ErrorRate, "error-rate", 0, "fraction of requests answered 500")
	f.Float64Var(&cfg.SpikeRate, "spike-rate", 0, "fraction of requests with a latency spike")
	f.DurationVar(&cfg.SpikeLatency, "spike-latency", time.Second, "extra latency of a spike")
	f.Int64Var(&cfg.CrashAfter, "crash-after", 0, "exit after this many requests (0: never)")
	f.StringVar(&cfg.CrashOn, "crash-on", "", "exit whenever a request whose body contains this text has run for --latency (a poison request)")
	f.StringVar(&cfg.APIKey, "api-key", "", "require this bearer key")
	return cmd
}
