package cli

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"

	"github.com/spf13/cobra"
)

// keyringResult is the answer of POST /v1/admin/cluster/keyring.
type keyringResult struct {
	Op          string            `json:"op"`
	NumNodes    int               `json:"num_nodes"`
	NumResp     int               `json:"num_resp"`
	NumErr      int               `json:"num_err"`
	Errors      map[string]string `json:"errors"`
	Keys        map[string]int    `json:"keys"`
	PrimaryKeys map[string]int    `json:"primary_keys"`
}

// clusterKeyringCmd is vbctl cluster keyring: gossip key rotation.
func clusterKeyringCmd(e *env) *cobra.Command {
	cmd := groupCmd("keyring", "Rotate the gossip encryption key on every node")
	cmd.Long = "Manage the gossip keyring of every coordinator and agent, as Consul's keyring command does.\n" +
		"Rotate with: install NEW (every node can then read it), use NEW (every node encrypts with\n" +
		"it), remove OLD. Each node keeps its keyring in its data dir across restarts. Make a key\n" +
		"with `vbatch gossip keygen`."
	for _, op := range []struct{ name, short string }{
		{"install", "Add KEY to every node's keyring"},
		{"use", "Make KEY, already installed, the key every node encrypts with"},
		{"remove", "Remove KEY, no longer primary anywhere, from every node's keyring"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   op.name + " KEY",
			Short: op.short,
			Args:  exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return e.keyringOp(cmd, op.name, args[0])
			},
		})
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the keys and how many nodes hold each",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.keyringOp(cmd, "list", "")
		},
	})
	return cmd
}

func (e *env) keyringOp(cmd *cobra.Command, op, key string) error {
	var res keyringResult
	raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/admin/cluster/keyring", map[string]string{"op": op, "key": key}, &res)
	if err != nil {
		return err
	}
	if e.jsonOut() {
		return e.printRaw(raw)
	}
	if op != "list" {
		fmt.Fprintf(e.stdout, "Keyring %s done on %d of %d nodes.\n", op, res.NumResp-res.NumErr, res.NumNodes)
		return nil
	}
	keys := make([]string, 0, len(res.Keys))
	for k := range res.Keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		rows = append(rows, []string{k, fmt.Sprintf("%d/%d", res.Keys[k], res.NumNodes), strconv.Itoa(res.PrimaryKeys[k])})
	}
	return e.table([]string{"KEY", "NODES", "PRIMARY ON"}, rows)
}
