package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

// defaultScopes are the scopes of a key created without --scope: enough to
// run batches and online inference, not to administer the cluster.
var defaultScopes = []string{"batch", "inference"}

// keyObject is an API key as the admin API describes it; Key, the secret,
// is set only in the answer to its creation.
type keyObject struct {
	ID        string   `json:"id"`
	Key       string   `json:"key"`
	Project   string   `json:"project"`
	Name      string   `json:"name"`
	Prefix    string   `json:"prefix"`
	Scopes    []string `json:"scopes"`
	CreatedAt int64    `json:"created_at"`
	RevokedAt int64    `json:"revoked_at"`
}

func keysCmd(e *env) *cobra.Command {
	cmd := groupCmd("keys", "Create, list and revoke API keys (admin scope)")
	cmd.AddCommand(keysCreateCmd(e), keysListCmd(e), keysRevokeCmd(e))
	return cmd
}

func keysCreateCmd(e *env) *cobra.Command {
	var project, name string
	var scopes []string
	cmd := &cobra.Command{
		Use:   "create --project NAME",
		Short: "Create an API key for a project; its secret is shown once",
		Long: "Create an API key for a project. The secret is shown only in this answer: store it\n" +
			"now. -o json prints {\"id\", \"key\", \"project\", \"name\", \"scopes\", \"created_at\", ...}.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(scopes) == 0 {
				scopes = defaultScopes
			}
			body := map[string]any{"project": project, "name": name, "scopes": scopes}
			var k keyObject
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/admin/keys", body, &k)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			if err := e.fields([][2]string{
				{"ID", k.ID},
				{"PROJECT", k.Project},
				{"NAME", orDash(k.Name)},
				{"SCOPES", strings.Join(k.Scopes, ",")},
				{"KEY", k.Key},
			}); err != nil {
				return err
			}
			fmt.Fprintln(e.stderr, "Warning: store this key now; it cannot be shown again.")
			return nil
		},
	}
	cmd.Flags().StringVar(&project, "project", "", "project the key belongs to (required)")
	cmd.Flags().StringVar(&name, "name", "", "a name to recognize the key by")
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "admin, batch, inference or read (repeatable; default batch and inference)")
	_ = cmd.MarkFlagRequired("project")
	return cmd
}

func keysListCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List API keys of every project, without their secrets",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l struct {
				Data []keyObject `json:"data"`
			}
			raw, err := e.call(cmd.Context(), http.MethodGet, "/v1/admin/keys", nil, &l)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			rows := make([][]string, 0, len(l.Data))
			for _, k := range l.Data {
				rows = append(rows, []string{k.ID, k.Project, orDash(k.Name), orDash(k.Prefix),
					strings.Join(k.Scopes, ","), fmtTime(k.CreatedAt), fmtTime(k.RevokedAt)})
			}
			return e.table([]string{"ID", "PROJECT", "NAME", "PREFIX", "SCOPES", "CREATED", "REVOKED"}, rows)
		},
	}
}

func keysRevokeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API key; requests with it are refused from then on",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k keyObject
			raw, err := e.call(cmd.Context(), http.MethodDelete, "/v1/admin/keys/"+url.PathEscape(args[0]), nil, &k)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			fmt.Fprintf(e.stdout, "Revoked %s\n", args[0])
			return nil
		},
	}
}
