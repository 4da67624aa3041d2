package cli

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// defaultScopes are the scopes of a key created without --scope: enough to
// run batches and online inference, not to administer the cluster.
var defaultScopes = []string{"batch", "inference"}

// keyObject is an API key as the admin API describes it; Key, the secret,
// is set only in the answer to its creation.
type keyObject struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`
	Project   string    `json:"project"`
	Name      string    `json:"name"`
	Prefix    string    `json:"prefix"`
	Scopes    []string  `json:"scopes"`
	CreatedAt int64     `json:"created_at"`
	RevokedAt int64     `json:"revoked_at"`
	Limits    keyLimits `json:"limits"`
}

// keyLimits are a key's own limits: 0 takes the deployment's default, a
// negative value is no limit.
type keyLimits struct {
	RequestsPerSecond   float64 `json:"requests_per_second,omitempty"`
	MaxEnqueuedRequests int64   `json:"max_enqueued_requests,omitempty"`
	MaxFileBytes        int64   `json:"max_file_bytes,omitempty"`
}

// String shows the limits a key sets, "default" when it sets none.
func (l keyLimits) String() string {
	var parts []string
	add := func(name string, sign int, v string) {
		switch {
		case sign < 0:
			parts = append(parts, name+"=unlimited")
		case sign > 0:
			parts = append(parts, name+"="+v)
		}
	}
	add("rps", cmpZero(l.RequestsPerSecond), strconv.FormatFloat(l.RequestsPerSecond, 'f', -1, 64))
	add("enqueued", cmpZero(l.MaxEnqueuedRequests), strconv.FormatInt(l.MaxEnqueuedRequests, 10))
	add("file_bytes", cmpZero(l.MaxFileBytes), strconv.FormatInt(l.MaxFileBytes, 10))
	if len(parts) == 0 {
		return "default"
	}
	return strings.Join(parts, ",")
}

func cmpZero[T int64 | float64](v T) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}

func keysCmd(e *env) *cobra.Command {
	cmd := groupCmd("keys", "Create, list and revoke API keys (admin scope)")
	cmd.AddCommand(keysCreateCmd(e), keysListCmd(e), keysRevokeCmd(e))
	return cmd
}

func keysCreateCmd(e *env) *cobra.Command {
	var project, name string
	var scopes []string
	var limits keyLimits
	cmd := &cobra.Command{
		Use:   "create --project NAME",
		Short: "Create an API key for a project; its secret is shown once",
		Long: "Create an API key for a project. The secret is shown only in this answer: store it\n" +
			"now. -o json prints {\"id\", \"key\", \"project\", \"name\", \"scopes\", \"created_at\", ...}.\n\n" +
			"--rps, --max-enqueued-requests and --max-file-bytes limit the key; left out (or 0) they\n" +
			"take the deployment's defaults, and a negative value means no limit. The enqueued\n" +
			"requests and file bytes count everything of the key's project.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(scopes) == 0 {
				scopes = defaultScopes
			}
			if math.IsNaN(limits.RequestsPerSecond) || math.IsInf(limits.RequestsPerSecond, 0) {
				return fmt.Errorf("--rps must be a number")
			}
			body := map[string]any{"project": project, "name": name, "scopes": scopes}
			if limits != (keyLimits{}) {
				body["limits"] = limits
			}
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
				{"LIMITS", k.Limits.String()},
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
	cmd.Flags().Float64Var(&limits.RequestsPerSecond, "rps", 0, "API requests per second the key may make on each coordinator (bursts of twice that)")
	cmd.Flags().Int64Var(&limits.MaxEnqueuedRequests, "max-enqueued-requests", 0, "requests the project may have waiting in unfinished batches when this key creates one")
	cmd.Flags().Int64Var(&limits.MaxFileBytes, "max-file-bytes", 0, "bytes of files the project may hold when this key uploads one")
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
					strings.Join(k.Scopes, ","), k.Limits.String(), fmtTime(k.CreatedAt), fmtTime(k.RevokedAt)})
			}
			return e.table([]string{"ID", "PROJECT", "NAME", "PREFIX", "SCOPES", "LIMITS", "CREATED", "REVOKED"}, rows)
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
