// Command vbatch runs the parts of a vbatch cluster: coordinators, agents,
// the simulator and a whole development cluster in one process.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "vbatch",
		Short:         "OpenAI-compatible batch inference on a bare-metal GPU fleet",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(coordinatorCmd(), agentCmd(), simCmd(), devCmd(), gpusCmd(), tlsCmd(), gossipCmd(), blobsCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "vbatch:", err)
		os.Exit(1)
	}
}
