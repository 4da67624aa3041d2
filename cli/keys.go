package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

type keyObject struct {
	ID        string   `json:"id"`
	Key       string   `json:"key,omitempty"`
	Project   string   `json:"project"`
	Name      string   `json:"name"`
	Prefix    string   `json:"prefix"`
	Scopes    []string `json:"scopes"`
	CreatedAt int64    `json:"created_at"`
	RevokedAt int64    `json:"revoked_at"`
}

func keysCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Manage API keys (admin)"}
	var project, name string
	var scopes []string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an API key for a project; the key is shown once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var k keyObject
			body := map[string]any{"project": project, "name": name, "scopes": scopes}
			if ok, err := e.get(cmd, http.MethodPost, "/v1/admin/keys", body, &k); !ok || err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "key:     %s\nid:      %s\nproject: %s\nscopes:  %s\n", k.Key, k.ID, k.Project, strings.Join(k.Scopes, ","))
			fmt.Fprintln(e.stderr, "Store this key now: it is not shown again.")
			return nil
		},
	}
	create.Flags().StringVar(&project, "project", "", "project the key belongs to")
	create.Flags().StringVar(&name, "name", "", "a name for the key")
	create.Flags().StringArrayVar(&scopes, "scope", nil, "scope: admin, batch, inference or read (repeatable; default batch+inference)")
	_ = create.MarkFlagRequired("project")

	list := &cobra.Command{
		Use:   "list",
		Short: "List API keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l struct {
				Data []keyObject `json:"data"`
			}
			if ok, err := e.get(cmd, http.MethodGet, "/v1/admin/keys", nil, &l); !ok || err != nil {
				return err
			}
			var rows [][]string
			for _, k := range l.Data {
				state := "active"
				if k.RevokedAt != 0 {
					state = "revoked " + unixTime(k.RevokedAt)
				}
				rows = append(rows, []string{k.ID, k.Project, orDash(k.Name), k.Prefix + "…", strings.Join(k.Scopes, ","), unixTime(k.CreatedAt), state})
			}
			e.table([]string{"ID", "PROJECT", "NAME", "PREFIX", "SCOPES", "CREATED", "STATE"}, rows)
			return nil
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ok, err := e.get(cmd, http.MethodDelete, "/v1/admin/keys/"+url.PathEscape(args[0]), nil, nil); !ok || err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "revoked %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
