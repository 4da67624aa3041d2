package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

type agentObject struct {
	ID         string   `json:"id"`
	RPCAddr    string   `json:"rpc_addr"`
	Models     []string `json:"models"`
	State      string   `json:"state"`
	LiveLeases int      `json:"live_leases"`
	LastSeen   int64    `json:"last_seen"`
	GPUs       []struct {
		Name             string `json:"name"`
		MemoryTotalBytes uint64 `json:"memory_total_bytes"`
	} `json:"gpus"`
}

func agentsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "agents", Short: "List and drain agents"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List agents with their models, GPUs and leases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l struct {
				Data []agentObject `json:"data"`
			}
			if ok, err := e.get(cmd, http.MethodGet, "/v1/admin/agents", nil, &l); !ok || err != nil {
				return err
			}
			var rows [][]string
			for _, a := range l.Data {
				gpus := "0"
				if len(a.GPUs) > 0 {
					gpus = fmt.Sprintf("%d× %s", len(a.GPUs), a.GPUs[0].Name)
				}
				rows = append(rows, []string{a.ID, a.State, a.RPCAddr, strings.Join(a.Models, ","), gpus, fmt.Sprint(a.LiveLeases), unixTime(a.LastSeen)})
			}
			e.table([]string{"ID", "STATE", "ADDRESS", "MODELS", "GPUS", "LEASES", "LAST SEEN"}, rows)
			return nil
		},
	}
	var wait bool
	drain := &cobra.Command{
		Use:   "drain ID",
		Short: "Stop giving an agent work and hand its leases back",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/v1/admin/agents/" + url.PathEscape(args[0]) + "/drain"
			if err := e.client.Do(cmd.Context(), http.MethodPost, path, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "draining %s\n", args[0])
			for wait {
				var l struct {
					Data []agentObject `json:"data"`
				}
				if err := e.client.Do(cmd.Context(), http.MethodGet, "/v1/admin/agents", nil, &l); err != nil {
					return err
				}
				busy := false
				for _, a := range l.Data {
					if a.ID == args[0] && a.LiveLeases > 0 {
						busy = true
					}
				}
				if !busy {
					fmt.Fprintf(e.stdout, "%s holds no leases\n", args[0])
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(time.Second):
				}
			}
			return nil
		},
	}
	drain.Flags().BoolVar(&wait, "wait", false, "wait until the agent holds no leases")
	cmd.AddCommand(list, drain)
	return cmd
}
