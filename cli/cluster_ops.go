package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// addClusterOps adds the commands that change the cluster to vbctl cluster.
func addClusterOps(e *env, cmd *cobra.Command) {
	cmd.AddCommand(clusterTransferCmd(e), clusterRemovePeerCmd(e), clusterJoinCmd(e), clusterSnapshotCmd(e), clusterKeyringCmd(e))
}

func clusterTransferCmd(e *env) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "transfer-leadership",
		Short: "Hand raft leadership to another coordinator",
		Long: "Ask the leader to hand leadership to the voter --to ID, or to the most up-to-date\n" +
			"voter, and print the new leader. Any coordinator may be asked; a follower forwards\n" +
			"to the leader. Use it before restarting or removing the leader.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				Leader string `json:"leader"`
			}
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/admin/cluster/transfer-leadership", map[string]string{"to": to}, &res)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			if res.Leader == "" {
				fmt.Fprintln(e.stdout, "Leadership transferred; the new leader is not known yet (see vbctl cluster status).")
				return nil
			}
			fmt.Fprintf(e.stdout, "Leader is now %s\n", res.Leader)
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "id of the coordinator to hand leadership to (default: raft picks)")
	return cmd
}

func clusterRemovePeerCmd(e *env) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "remove-peer ID",
		Short: "Remove a coordinator from the raft configuration",
		Long: "Remove the coordinator ID from the raft configuration, for a dead node that will not\n" +
			"come back or one being retired. The leader cannot be removed: transfer leadership\n" +
			"first. A removed node that is still running is not added back for 10 minutes, or\n" +
			"until it restarts; stop it first (see docs/operations.md).\n\n" +
			"The leader refuses (409 unsafe_removal) a removal after which the healthy voters\n" +
			"would not be a majority of the remaining ones: the cluster would lose its leader.\n" +
			"--force removes anyway.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"id": args[0]}
			if force {
				body["force"] = true
			}
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/admin/cluster/remove-peer", body, nil)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			fmt.Fprintf(e.stdout, "Removed %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove even if the healthy voters left would not be a majority (the cluster loses its leader)")
	return cmd
}

func clusterJoinCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "join ADDR[,ADDR...]",
		Short: "Join the coordinator's gossip pool to other members",
		Long: "Make the coordinator --addr points at join the gossip pool of the given gossip\n" +
			"addresses (host:port). The raft leader then adds every new coordinator as a voter.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var addrs []string
			for _, a := range strings.Split(args[0], ",") {
				if a = strings.TrimSpace(a); a != "" {
					addrs = append(addrs, a)
				}
			}
			if len(addrs) == 0 {
				return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf("no address in %q", args[0])}
			}
			var res struct {
				Contacted int `json:"contacted"`
			}
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/admin/cluster/join", map[string]any{"addresses": addrs}, &res)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			fmt.Fprintf(e.stdout, "Joined: %d of %d addresses answered\n", res.Contacted, len(addrs))
			return nil
		},
	}
}

func clusterSnapshotCmd(e *env) *cobra.Command {
	cmd := groupCmd("snapshot", "Save or restore the replicated state")
	cmd.AddCommand(&cobra.Command{
		Use:   "save FILE",
		Short: "Save a consistent copy of the replicated state to FILE",
		Long: "Save the replicated state (keys, files' metadata, batches, agents) as of a consistent\n" +
			"read to FILE, through FILE.part renamed when complete. File contents stay in the\n" +
			"coordinators' blob stores: back up their data dirs as well (docs/operations.md).",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, index, err := e.saveSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printJSON(map[string]any{"path": args[0], "bytes": n, "index": index})
			}
			fmt.Fprintf(e.stderr, "Wrote %s (%s, raft index %d)\n", args[0], fmtBytes(n), index)
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the replicated state with a saved snapshot",
		Long: "Replace the replicated state on every coordinator with the snapshot in FILE (written\n" +
			"by snapshot save). Everything written since the save is lost. The blobs the restored\n" +
			"files reference must still be in some coordinator's blob store.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			index, raw, err := e.restoreSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			fmt.Fprintf(e.stdout, "Restored %s (raft index %d)\n", args[0], index)
			return nil
		},
	})
	return cmd
}

// saveSnapshot streams the snapshot to out.part and renames it to out. It
// returns the bytes written and the raft index the snapshot reflects.
func (e *env) saveSnapshot(ctx context.Context, out string) (int64, uint64, error) {
	body, hdr, err := e.client.StreamWithHeader(ctx, http.MethodGet, "/v1/admin/cluster/snapshot", "", nil)
	if err != nil {
		return 0, 0, withContext(err, "snapshot save")
	}
	defer body.Close()
	index, _ := strconv.ParseUint(hdr.Get("X-Vbatch-Snapshot-Index"), 10, 64)
	tmp := out + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, 0, fmt.Errorf("snapshot save: %w", err)
	}
	n, err := io.Copy(f, body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, out)
	}
	if err != nil {
		os.Remove(tmp)
		return n, 0, fmt.Errorf("snapshot save to %s: %w", out, err)
	}
	return n, index, nil
}

// restoreSnapshot sends the file at path to be restored and returns the
// raft index the cluster installed it at, and the answer as written.
func (e *env) restoreSnapshot(ctx context.Context, path string) (uint64, json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, fmt.Errorf("snapshot restore: %w", err)
	}
	defer f.Close()
	body, err := e.client.Stream(ctx, http.MethodPost, "/v1/admin/cluster/snapshot/restore", "application/octet-stream", f)
	if err != nil {
		return 0, nil, withContext(err, "snapshot restore %s", path)
	}
	defer body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(body).Decode(&raw); err != nil {
		return 0, nil, fmt.Errorf("snapshot restore %s: decode answer: %w", path, err)
	}
	var res struct {
		Index uint64 `json:"index"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return 0, nil, fmt.Errorf("snapshot restore %s: decode answer: %w", path, err)
	}
	return res.Index, raw, nil
}
