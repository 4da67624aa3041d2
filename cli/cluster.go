package cli

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"
)

type clusterStatus struct {
	Leader  string `json:"leader"`
	Servers []struct {
		ID        string `json:"id"`
		RaftAddr  string `json:"raft_addr"`
		HTTPAddr  string `json:"http_addr"`
		Suffrage  string `json:"suffrage"`
		State     string `json:"state"`
		LastIndex uint64 `json:"last_index"`
		Reachable bool   `json:"reachable"`
	} `json:"servers"`
}

func clusterCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Raft cluster operations"}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the leader and every server's raft state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st clusterStatus
			if ok, err := e.get(cmd, http.MethodGet, "/v1/admin/cluster/status", nil, &st); !ok || err != nil {
				return err
			}
			var rows [][]string
			for _, s := range st.Servers {
				leader := ""
				if s.ID == st.Leader {
					leader = "*"
				}
				state := s.State
				if !s.Reachable {
					state = "unreachable"
				}
				rows = append(rows, []string{s.ID, state, s.Suffrage, s.RaftAddr, orDash(s.HTTPAddr), fmt.Sprint(s.LastIndex), leader})
			}
			e.table([]string{"ID", "STATE", "SUFFRAGE", "RAFT ADDR", "HTTP ADDR", "LAST INDEX", "LEADER"}, rows)
			return nil
		},
	})
	return cmd
}
