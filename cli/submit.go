package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func submitCmd(e *env) *cobra.Command {
	var cp createParams
	var wait bool
	var outDir string
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "submit FILE",
		Short: "Upload FILE, create a batch, and with --wait follow it and download the results",
		Long: "Upload FILE, create a batch, and with --wait show progress until the batch ends, then\n" +
			"download <batch_id>_output.jsonl and <batch_id>_error.jsonl into --output-dir.\n" +
			"Exit status: 0 when the batch completed, 1 for any other end (failed, expired, cancelled).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := e.uploadFile(cmd, args[0], "batch")
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "uploaded %s (%d bytes) as %s\n", args[0], f.Bytes, f.ID)
			body, err := cp.body(f.ID)
			if err != nil {
				return err
			}
			var b batchObject
			if err := e.client.Do(cmd.Context(), http.MethodPost, "/v1/batches", body, &b); err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "created batch %s\n", b.ID)
			if !wait {
				return e.showBatch(&b)
			}
			final, err := e.follow(cmd, b.ID, poll)
			if err != nil {
				return err
			}
			return e.finish(cmd, final, outDir)
		},
	}
	cp.flags(cmd)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the batch to end and download its files")
	cmd.Flags().StringVar(&outDir, "output-dir", ".", "where --wait writes the output and error files")
	cmd.Flags().DurationVar(&poll, "poll", time.Second, "progress poll interval")
	return cmd
}

func watchCmd(e *env) *cobra.Command {
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "watch ID",
		Short: "Show a batch's progress until it ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := e.follow(cmd, args[0], poll)
			if err != nil {
				return err
			}
			if err := e.showBatch(b); err != nil {
				return err
			}
			if b.Status != "completed" {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&poll, "poll", time.Second, "progress poll interval")
	return cmd
}

// follow polls a batch until it is terminal, drawing a progress line on
// stderr: redrawn in place on a terminal, one line every few seconds
// otherwise.
func (e *env) follow(cmd *cobra.Command, id string, poll time.Duration) (*batchObject, error) {
	tty := isTerminal(e.stderr)
	start := time.Now()
	var lastPrint time.Time
	var prevDone int64
	prevAt := start
	rate := 0.0
	misses := 0
	for {
		var b batchObject
		err := e.client.Do(cmd.Context(), http.MethodGet, "/v1/batches/"+url.PathEscape(id), nil, &b)
		if err != nil {
			// A coordinator restarting is not the batch failing: retry a while.
			if misses++; misses > 30 || cmd.Context().Err() != nil {
				return nil, err
			}
		} else {
			misses = 0
			done := b.RequestCounts.Completed + b.RequestCounts.Failed
			if now := time.Now(); now.Sub(prevAt) >= time.Second {
				rate = float64(done-prevDone) / now.Sub(prevAt).Seconds()
				prevDone, prevAt = done, now
			}
			line := progressLine(&b, rate)
			if tty {
				fmt.Fprintf(e.stderr, "\r%s\033[K", line)
			} else if time.Since(lastPrint) >= 5*time.Second || b.terminal() {
				fmt.Fprintln(e.stderr, line)
				lastPrint = time.Now()
			}
			if b.terminal() {
				if tty {
					fmt.Fprintln(e.stderr)
				}
				return &b, nil
			}
		}
		select {
		case <-cmd.Context().Done():
			return nil, cmd.Context().Err()
		case <-time.After(poll):
		}
	}
}

func progressLine(b *batchObject, rate float64) string {
	const width = 30
	done := b.RequestCounts.Completed + b.RequestCounts.Failed
	filled := 0
	if b.RequestCounts.Total > 0 {
		filled = int(done * width / b.RequestCounts.Total)
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	return fmt.Sprintf("[%s] %d/%d done %d failed %6.0f req/s  status %s",
		bar, done, b.RequestCounts.Total, b.RequestCounts.Failed, rate, b.Status)
}

// finish downloads a finished batch's files and prints the summary.
func (e *env) finish(cmd *cobra.Command, b *batchObject, outDir string) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct{ id, suffix string }{{b.OutputFileID, "output"}, {b.ErrorFileID, "error"}} {
		if f.id == "" {
			continue
		}
		path := filepath.Join(outDir, fmt.Sprintf("%s_%s.jsonl", b.ID, f.suffix))
		if err := e.download(cmd, f.id, path); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "wrote %s\n", path)
	}
	if err := e.showBatch(b); err != nil {
		return err
	}
	if b.Status != "completed" {
		return &exitError{code: 1}
	}
	return nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
