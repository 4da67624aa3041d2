package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// agentObject is one agent as GET /v1/admin/agents describes it.
type agentObject struct {
	ID         string     `json:"id"`
	RPCAddr    string     `json:"rpc_addr"`
	Models     []string   `json:"models"`
	GPUs       []agentGPU `json:"gpus"`
	LiveLeases int        `json:"live_leases"`
	LastSeen   int64      `json:"last_seen"`
	State      string     `json:"state"`
}

type agentGPU struct {
	Name             string `json:"name"`
	MemoryTotalBytes int64  `json:"memory_total_bytes"`
}

// agentList is the answer of GET /v1/admin/agents.
type agentList struct {
	Data []agentObject `json:"data"`
}

func agentsCmd(e *env) *cobra.Command {
	cmd := groupCmd("agents", "List, drain, undrain and remove agents (admin scope)")
	cmd.AddCommand(agentsListCmd(e), agentsDrainCmd(e), agentsUndrainCmd(e), agentsRemoveCmd(e))
	return cmd
}

func agentsListCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List agents: address, models, GPUs, live leases, last seen",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l agentList
			raw, err := e.call(cmd.Context(), http.MethodGet, "/v1/admin/agents", nil, &l)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			now := e.now()
			rows := make([][]string, 0, len(l.Data))
			for _, a := range l.Data {
				rows = append(rows, []string{a.ID, orDash(a.State), orDash(a.RPCAddr), orDash(strings.Join(a.Models, ",")),
					fmtGPUs(a.GPUs), strconv.Itoa(a.LiveLeases), fmtAge(now, a.LastSeen)})
			}
			return e.table([]string{"ID", "STATE", "ADDRESS", "MODELS", "GPUS", "LEASES", "LAST SEEN"}, rows)
		},
	}
}

func agentsDrainCmd(e *env) *cobra.Command {
	var wait bool
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Stop giving an agent work and have it hand its leases back",
		Long: "Stop giving an agent work and have it hand its leases back. With --wait, return once\n" +
			"the agent holds no live lease (or is gone), so it can be stopped without losing work.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if wait && poll <= 0 {
				return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf("--poll must be positive, not %s", poll)}
			}
			id := args[0]
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/admin/agents/"+url.PathEscape(id)+"/drain", nil, nil)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				if err := e.printRaw(raw); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(e.stdout, "Draining %s\n", id)
			}
			if !wait {
				return nil
			}
			return e.waitDrained(cmd.Context(), id, poll)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the agent holds no live lease")
	cmd.Flags().DurationVar(&poll, "poll", time.Second, "how often --wait asks for the agent's leases")
	return cmd
}

func agentsUndrainCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "undrain ID",
		Short: "Give a drained agent work again",
		Long: "Give a drained agent work again: it takes leases at its next poll. (Restarting the\n" +
			"agent undrains it too.)",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.agentAction(cmd.Context(), http.MethodPost, args[0], "/undrain", "Undrained")
		},
	}
}

func agentsRemoveCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Forget a stopped agent (the last step of retiring it)",
		Long: "Forget a stopped agent: the cluster stops listing it, its metrics series end (and\n" +
			"VbatchAgentDown with them), and any chunk it still held goes back to pending. The\n" +
			"agent must be stopped first: one still alive in gossip is refused (HTTP 409). Retire an\n" +
			"agent with 'vbctl agents drain ID --wait', then stop its service, then this. Without\n" +
			"it the leader forgets a stopped agent after --agent-forget-after (24 h).",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.agentAction(cmd.Context(), http.MethodDelete, args[0], "", "Removed")
		},
	}
}

// agentAction sends method to /v1/admin/agents/{id}{suffix} and prints the
// answer (-o json) or "<done> <id>".
func (e *env) agentAction(ctx context.Context, method, id, suffix, done string) error {
	raw, err := e.call(ctx, method, "/v1/admin/agents/"+url.PathEscape(id)+suffix, nil, nil)
	if err != nil {
		return err
	}
	if e.jsonOut() {
		return e.printRaw(raw)
	}
	fmt.Fprintf(e.stdout, "%s %s\n", done, id)
	return nil
}

// waitDrained polls the agent list until agent id holds no live lease or
// is no longer listed. Temporary failures are retried for followGiveUp.
func (e *env) waitDrained(ctx context.Context, id string, poll time.Duration) error {
	var failingSince time.Time
	last := -1
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		var l agentList
		// Read through the leader: a follower behind it could report the
		// agent's last lease gone before it is.
		_, err := e.call(ctx, http.MethodGet, "/v1/admin/agents?consistent=true", nil, &l)
		switch {
		case err != nil && (ctx.Err() != nil || !temporary(err)):
			return err
		case err != nil:
			if failingSince.IsZero() {
				failingSince = e.now()
				fmt.Fprintf(e.stderr, "Warning: %v (retrying)\n", err)
			}
			if e.now().Sub(failingSince) > followGiveUp {
				return fmt.Errorf("wait for agent %s to drain: gave up after %s: %w", id, followGiveUp, err)
			}
		default:
			failingSince = time.Time{}
			leases := 0
			for _, a := range l.Data {
				if a.ID == id {
					leases = a.LiveLeases
				}
			}
			if leases == 0 {
				fmt.Fprintf(e.stderr, "%s holds no live lease\n", id)
				return nil
			}
			if leases != last {
				fmt.Fprintf(e.stderr, "%s holds %d live lease(s)\n", id, leases)
				last = leases
			}
		}
		timer.Reset(poll)
	}
}

// fmtGPUs summarizes GPUs by model in the order first seen:
// "2x NVIDIA H100 80GB HBM3 (79.6 GiB)"; none is "0".
func fmtGPUs(gpus []agentGPU) string {
	if len(gpus) == 0 {
		return "0"
	}
	type group struct {
		name  string
		n     int
		bytes int64
	}
	var groups []*group
	byName := map[string]*group{}
	for _, g := range gpus {
		name := orDash(g.Name)
		grp, ok := byName[name]
		if !ok {
			grp = &group{name: name, bytes: g.MemoryTotalBytes}
			byName[name] = grp
			groups = append(groups, grp)
		}
		grp.n++
	}
	parts := make([]string, 0, len(groups))
	for _, g := range groups {
		s := fmt.Sprintf("%dx %s", g.n, g.name)
		if g.bytes > 0 {
			s += " (" + fmtBytes(g.bytes) + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
