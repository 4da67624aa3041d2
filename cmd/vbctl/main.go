// Command vbctl is the vbatch cluster CLI: files, batches, API keys, agents
// and the raft cluster, over a coordinator's HTTP API. See package cli.
package main

import (
	"os"

	"github.com/vbatch/vbatch/cli"
)

func main() {
	os.Exit(cli.Execute())
}
