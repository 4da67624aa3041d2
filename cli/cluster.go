package cli

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/spf13/cobra"
)

// clusterStatus is the answer of GET /v1/admin/cluster/status.
type clusterStatus struct {
	Leader         string           `json:"leader"`
	Servers        []clusterServer  `json:"servers"`
	Autopilot      *autopilotStatus `json:"autopilot"`
	AutopilotError string           `json:"autopilot_error"`
}

// autopilotStatus is the leader's autopilot view in clusterStatus.
type autopilotStatus struct {
	Healthy           bool   `json:"healthy"`
	FailureTolerance  int    `json:"failure_tolerance"`
	StabilizationTime string `json:"stabilization_time"`
	DeadServerGrace   string `json:"dead_server_grace"`
	Servers           []struct {
		ID          string `json:"id"`
		NodeStatus  string `json:"node_status"`
		RaftState   string `json:"raft_state"`
		Healthy     bool   `json:"healthy"`
		StableSince string `json:"stable_since"`
	} `json:"servers"`
}

// clusterServer is one raft server of clusterStatus.
type clusterServer struct {
	ID         string   `json:"id"`
	RaftAddr   string   `json:"raft_addr"`
	HTTPAddr   string   `json:"http_addr"`
	RPCAddr    string   `json:"rpc_addr"`
	Suffrage   string   `json:"suffrage"`
	State      string   `json:"state"`
	LastIndex  uint64   `json:"last_index"`
	Term       uint64   `json:"term"`
	Reachable  bool     `json:"reachable"`
	LogWriteMs *float64 `json:"log_write_ms"`
	FSMLevel   int      `json:"fsm_level"`
}

func clusterCmd(e *env) *cobra.Command {
	cmd := groupCmd("cluster", "Inspect and operate the raft cluster of coordinators")
	addClusterOps(e, cmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the leader and every coordinator's raft state",
		Long: "Show the leader and, for every raft server, its id, state, suffrage, raft and HTTP\n" +
			"addresses and last log index. A server the answering coordinator cannot reach is\n" +
			"shown as unreachable. -o json prints {\"leader\": ID, \"servers\": [...]}.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st clusterStatus
			raw, err := e.call(cmd.Context(), http.MethodGet, "/v1/admin/cluster/status", nil, &st)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			return e.showCluster(&st)
		},
	})
	return cmd
}

func (e *env) showCluster(st *clusterStatus) error {
	rows := make([][]string, 0, len(st.Servers))
	for _, s := range st.Servers {
		leader := ""
		if s.ID == st.Leader && st.Leader != "" {
			leader = "*"
		}
		state := orDash(s.State)
		if !s.Reachable {
			state = "unreachable"
		}
		logWrite := "-"
		if s.LogWriteMs != nil {
			logWrite = strconv.FormatFloat(*s.LogWriteMs, 'f', 1, 64) + "ms"
		}
		level := "-"
		if s.FSMLevel > 0 {
			level = strconv.Itoa(s.FSMLevel)
		}
		rows = append(rows, []string{s.ID, state, orDash(s.Suffrage), orDash(s.RaftAddr), orDash(s.HTTPAddr),
			strconv.FormatUint(s.LastIndex, 10), logWrite, level, leader})
	}
	health := map[string]string{}
	if ap := st.Autopilot; ap != nil {
		for _, s := range ap.Servers {
			h := "healthy"
			if !s.Healthy {
				h = "unhealthy"
			}
			if s.NodeStatus != "" && s.NodeStatus != "alive" {
				h += " (" + s.NodeStatus + ")"
			}
			if s.StableSince != "" {
				h += " since " + s.StableSince
			}
			health[s.ID] = h
		}
	}
	for i, s := range st.Servers {
		rows[i] = append(rows[i], orDash(health[s.ID]))
	}
	if err := e.table([]string{"ID", "STATE", "SUFFRAGE", "RAFT ADDR", "HTTP ADDR", "LAST INDEX", "LOG WRITE", "FSM", "LEADER", "HEALTH"}, rows); err != nil {
		return err
	}
	if ap := st.Autopilot; ap != nil {
		verdict := "healthy"
		if !ap.Healthy {
			verdict = "UNHEALTHY"
		}
		fmt.Fprintf(e.stdout, "\nAutopilot: %s, failure tolerance %d, stabilization time %s, dead server grace %s\n",
			verdict, ap.FailureTolerance, ap.StabilizationTime, ap.DeadServerGrace)
	} else if st.AutopilotError != "" {
		fmt.Fprintf(e.stdout, "\nAutopilot: unavailable (%s)\n", st.AutopilotError)
	}
	if st.Leader == "" {
		fmt.Fprintln(e.stderr, "Warning: the cluster has no leader; writes fail until one is elected.")
	}
	return nil
}
