package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/agent/gpu"
	"github.com/vbatch/vbatch/monitoring"
)

// gpusCmd prints what NVML reports on this host: what an agent here would
// register and send as telemetry.
func gpusCmd() *cobra.Command {
	var samples int
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "Show the GPUs NVML reports on this host (as JSON lines, one sample per line)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger := monitoring.NewLogger(os.Stderr, "info", "gpu")
			d := gpu.NewNVML(logger)
			defer d.Close()
			enc := json.NewEncoder(cmd.OutOrStdout())
			for i := 0; i < samples; i++ {
				if i > 0 {
					select {
					case <-cmd.Context().Done():
						return nil
					case <-time.After(interval):
					}
				}
				infos, err := d.Discover()
				if err != nil {
					return fmt.Errorf("discover GPUs: %w", err)
				}
				if err := enc.Encode(map[string]any{"time": time.Now().UTC().Format(time.RFC3339Nano), "gpus": infos}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&samples, "samples", 1, "how many samples to print")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "time between samples")
	return cmd
}
