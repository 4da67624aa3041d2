package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vbatch/vbatch/internal/version"
)

// Exit codes of vbctl.
const (
	// ExitOK: the command did what was asked; for batches submit --wait and
	// batches watch, the batch completed.
	ExitOK = 0
	// ExitError: the command failed (the server answered an error, the
	// server could not be reached, a flag was wrong), or the batch that
	// submit --wait or watch followed ended other than completed (failed,
	// expired or cancelled).
	ExitError = 1
	// ExitInterrupted: vbctl was interrupted (SIGINT or SIGTERM); a batch it
	// was following carries on in the cluster.
	ExitInterrupted = 130
)

// env is what every command shares: the global flags, the client built from
// them and the output streams.
type env struct {
	addr, apiKey, output string
	caCert, serverName   string
	timeout              time.Duration
	consistent           bool

	stdout, stderr io.Writer
	// tty is whether stderr is a terminal: progress lines are redrawn in
	// place there, printed every few seconds elsewhere.
	tty bool
	// now is the clock for ages ("5s ago") and rates.
	now    func() time.Time
	client *Client
}

// Execute runs vbctl with the process's arguments and standard streams,
// stopping on SIGINT or SIGTERM, and returns the exit code for os.Exit.
func Execute() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

// Run executes vbctl with args (without the program name), writing results
// to stdout and errors and progress to stderr, and returns the exit code:
// ExitOK, ExitError or ExitInterrupted. Errors are printed as
// "Error: <message>"; an error answered by the server as
// "Error: <message> (HTTP <status>, <code>)".
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, tty: isTerminal(stderr), now: time.Now}
	return e.run(ctx, args)
}

// run executes the command line args with e's streams and clock.
func (e *env) run(ctx context.Context, args []string) int {
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	return e.exitCode(ctx, root.ExecuteContext(ctx))
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "vbctl",
		Short: "vbctl manages a vbatch cluster over its HTTP API",
		Long: "vbctl manages a vbatch cluster over its OpenAI-compatible HTTP API: files, batches,\n" +
			"API keys, agents and the raft cluster. Any coordinator serves every command.\n\n" +
			"Environment: VBATCH_ADDR (else OPENAI_BASE_URL, whose /v1 suffix is dropped) sets --addr;\n" +
			"VBATCH_API_KEY (else OPENAI_API_KEY) sets --api-key; VBATCH_CA_CERT sets --ca-cert;\n" +
			"VBATCH_TLS_SERVER_NAME sets --tls-server-name.\n\n" +
			"Exit status: 0 on success; 1 on any error, and when a batch followed by\n" +
			"'batches submit --wait' or 'batches watch' ends other than completed; 130 when interrupted.",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Runnable, so that an unknown command is an error, not help.
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return e.setup(cmd.Root().PersistentFlags())
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&e.addr, "addr", "", "coordinator address (default $VBATCH_ADDR, $OPENAI_BASE_URL or "+DefaultAddr+")")
	pf.StringVar(&e.apiKey, "api-key", "", "API key (default $VBATCH_API_KEY or $OPENAI_API_KEY)")
	pf.StringVarP(&e.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&e.timeout, "timeout", 30*time.Second, "limit on each API call; for uploads and downloads, on a pause in the transfer or the wait for the answer (0: none)")
	pf.StringVar(&e.caCert, "ca-cert", "", "PEM CA certificate that signed the coordinators' HTTPS certificates (default $VBATCH_CA_CERT)")
	pf.StringVar(&e.serverName, "tls-server-name", "", "name to expect on the coordinator's certificate, e.g. server.global.vbatch (default $VBATCH_TLS_SERVER_NAME)")
	pf.BoolVar(&e.consistent, "consistent", false, "read from the raft leader instead of the nearest coordinator's copy")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.AddCommand(clusterCmd(e), filesCmd(e), batchesCmd(e), keysCmd(e), agentsCmd(e))
	return root
}

// setup checks the global flags, fills the unset ones from the environment
// and builds the client.
func (e *env) setup(fs *pflag.FlagSet) error {
	if e.output != "table" && e.output != "json" {
		return &usageError{cmd: "vbctl", err: fmt.Errorf("-o must be table or json, not %q", e.output)}
	}
	if e.timeout < 0 {
		return &usageError{cmd: "vbctl", err: fmt.Errorf("--timeout must not be negative, not %s", e.timeout)}
	}
	if !fs.Changed("addr") {
		e.addr = firstEnv(DefaultAddr, "VBATCH_ADDR", "OPENAI_BASE_URL")
		if os.Getenv("VBATCH_ADDR") == "" && os.Getenv("OPENAI_BASE_URL") != "" {
			// A shell set up for another OpenAI-compatible service would
			// send vbatch's calls (and key) there: say so.
			fmt.Fprintf(e.stderr, "vbctl: VBATCH_ADDR is not set; using OPENAI_BASE_URL (%s)\n", e.addr)
		}
	}
	if !fs.Changed("api-key") {
		e.apiKey = firstEnv("", "VBATCH_API_KEY", "OPENAI_API_KEY")
	}
	if !fs.Changed("ca-cert") {
		e.caCert = os.Getenv("VBATCH_CA_CERT")
	}
	if !fs.Changed("tls-server-name") {
		e.serverName = os.Getenv("VBATCH_TLS_SERVER_NAME")
	}
	e.client = NewClient(e.addr, e.apiKey, e.timeout)
	e.client.Consistent = e.consistent
	if e.caCert != "" || e.serverName != "" {
		hc, err := tlsHTTPClient(e.caCert, e.serverName)
		if err != nil {
			return err
		}
		e.client.HTTP = hc
	}
	return nil
}

// tlsHTTPClient is an HTTP client that trusts the CA in caFile (else the
// system's roots) and, if serverName is set, expects that name on the
// server's certificate whatever address was dialed.
func tlsHTTPClient(caFile, serverName string) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca-cert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-cert %s: no PEM certificates", caFile)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// exitCode prints err as vbctl reports errors and maps it to an exit code.
func (e *env) exitCode(ctx context.Context, err error) int {
	var exit *exitError
	var usage *usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &exit):
		return exit.code
	case ctx.Err() != nil:
		fmt.Fprintln(e.stderr, "Error: interrupted")
		return ExitInterrupted
	case errors.As(err, &usage):
		fmt.Fprintf(e.stderr, "Error: %v\nRun '%s --help' for usage.\n", usage.err, usage.cmd)
		return ExitError
	default:
		fmt.Fprintln(e.stderr, "Error:", err)
		return ExitError
	}
}

// exitError ends vbctl with a code after the command printed its result,
// as when a followed batch failed.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError is a command line vbctl cannot run: a wrong flag or argument.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

func (e *usageError) Unwrap() error { return e.err }

// exactArgs is cobra.ExactArgs reported as a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return &usageError{cmd: cmd.CommandPath(), err: err}
		}
		return nil
	}
}

// noArgs is cobra.NoArgs reported as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return &usageError{cmd: cmd.CommandPath(), err: err}
	}
	return nil
}

// groupCmd is a command that only holds subcommands: alone it prints its
// help, and an unknown subcommand is a usage error rather than help.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			return cmd.Help()
		},
	}
}

// firstEnv returns the first non-empty environment variable of names, or
// def.
func firstEnv(def string, names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return def
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
