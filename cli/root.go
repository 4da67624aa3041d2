package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// env is what every command shares: the client and the output streams.
type env struct {
	addr, apiKey, output string
	timeout              time.Duration
	stdout, stderr       io.Writer
	client               *Client
}

// Run executes vbctl with args and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "vbctl",
		Short:         "vbctl manages a vbatch cluster over its HTTP API",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if e.output != "table" && e.output != "json" {
				return fmt.Errorf("-o must be table or json, not %q", e.output)
			}
			e.client = &Client{BaseURL: NormalizeBase(e.addr), APIKey: e.apiKey, HTTP: &http.Client{Timeout: e.timeout}}
			return nil
		},
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&e.addr, "addr", firstEnv("http://127.0.0.1:8000", "VBATCH_ADDR", "OPENAI_BASE_URL"), "coordinator address (VBATCH_ADDR, OPENAI_BASE_URL)")
	pf.StringVar(&e.apiKey, "api-key", firstEnv("", "VBATCH_API_KEY", "OPENAI_API_KEY"), "API key (VBATCH_API_KEY, OPENAI_API_KEY)")
	pf.StringVarP(&e.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&e.timeout, "timeout", 0, "HTTP timeout per request (0: none)")
	root.AddCommand(clusterCmd(e), filesCmd(e), batchesCmd(e), keysCmd(e), agentsCmd(e))
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *exitError
	if errors.As(err, &exit) {
		return exit.code
	}
	fmt.Fprintln(stderr, "Error:", err)
	return 1
}

// exitError ends vbctl with a code after output was already printed.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func firstEnv(def string, names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return def
}

// printJSON pretty-prints v (raw JSON or any value).
func (e *env) printJSON(v any) error {
	if raw, ok := v.(json.RawMessage); ok {
		var anyv any
		if err := json.Unmarshal(raw, &anyv); err != nil {
			return err
		}
		v = anyv
	}
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes rows with aligned columns.
func (e *env) table(header []string, rows [][]string) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for i, h := range header {
		if i > 0 {
			fmt.Fprint(tw, "\t")
		}
		fmt.Fprint(tw, h)
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		for i, c := range r {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// get fetches path; with -o json it prints the raw answer and returns
// false, else decodes into out and returns true.
func (e *env) get(cmd *cobra.Command, method, path string, in, out any) (bool, error) {
	if e.output == "json" {
		var raw json.RawMessage
		if err := e.client.Do(cmd.Context(), method, path, in, &raw); err != nil {
			return false, err
		}
		return false, e.printJSON(raw)
	}
	return true, e.client.Do(cmd.Context(), method, path, in, out)
}

func unixTime(sec int64) string {
	if sec == 0 {
		return "-"
	}
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
