package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

const (
	// progressEvery is how often a progress line is printed when stderr is
	// not a terminal (besides every status change).
	progressEvery = 5 * time.Second
	// rateWindow is the span the request rate is averaged over.
	rateWindow = 10 * time.Second
	// followGiveUp is how long following a batch tolerates failing polls:
	// long enough to ride out a leader election or a coordinator restart.
	followGiveUp = 2 * time.Minute
	// barWidth is the number of cells in the progress bar.
	barWidth = 20
)

const endedHelp = "\n\nExit status: 0 when the batch completed; 1 when it failed, expired or was cancelled\n" +
	"(or on any error); 130 when interrupted, and the batch carries on in the cluster."

func batchesSubmitCmd(e *env) *cobra.Command {
	var cp createParams
	var wait bool
	var outDir string
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "submit FILE",
		Short: "Upload FILE and create a batch from it; with --wait, follow it and download its results",
		Long: "Upload FILE (purpose batch) and create a batch from it. With --wait, show its progress\n" +
			"on stderr until it ends, then download its output and error files into --output-dir as\n" +
			"<batch_id>_output.jsonl and <batch_id>_error.jsonl and print a summary; -o json prints\n" +
			"{\"batch\": {...}, \"output_path\", \"error_path\", \"duration_seconds\"}." + endedHelp,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if poll <= 0 {
				return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf("--poll must be positive, not %s", poll)}
			}
			// The flags are checked before the upload, so a typo does not
			// leave an upload behind.
			if _, err := cp.body(""); err != nil {
				return &usageError{cmd: cmd.CommandPath(), err: err}
			}
			start := e.now()
			f, _, err := e.uploadFile(cmd.Context(), args[0], "batch")
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "Uploaded %s (%s) as %s\n", args[0], fmtBytes(f.Bytes), f.ID)
			body, err := cp.body(f.ID)
			if err != nil {
				return &usageError{cmd: cmd.CommandPath(), err: err}
			}
			var b batchObject
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/batches", body, &b)
			if err != nil {
				return fmt.Errorf("%w\nThe file stays uploaded as %s: create the batch with vbctl batches create --input-file %s", err, f.ID, f.ID)
			}
			fmt.Fprintf(e.stderr, "Created batch %s\n", b.ID)
			if !wait {
				fmt.Fprintf(e.stderr, "Follow it with: vbctl batches watch %s\n", b.ID)
				if e.jsonOut() {
					return e.printRaw(raw)
				}
				return e.showBatch(&b)
			}
			final, raw, err := e.follow(cmd.Context(), b.ID, poll)
			if err != nil {
				return err
			}
			return e.finish(cmd.Context(), final, raw, outDir, start)
		},
	}
	cp.addFlags(cmd)
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the batch until it ends and download its files")
	cmd.Flags().StringVar(&outDir, "output-dir", ".", "directory --wait writes the output and error files to")
	cmd.Flags().DurationVar(&poll, "poll", time.Second, "how often --wait asks for the batch's progress")
	return cmd
}

func batchesWatchCmd(e *env) *cobra.Command {
	var poll time.Duration
	var outDir string
	cmd := &cobra.Command{
		Use:   "watch ID",
		Short: "Show a batch's progress until it ends; with --output-dir, download its results",
		Long: "Show a batch's progress on stderr until it ends, then print the batch. With\n" +
			"--output-dir, download its output and error files there as submit --wait does (and\n" +
			"print its summary instead): the way to pick up a submit --wait that was interrupted." + endedHelp,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if poll <= 0 {
				return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf("--poll must be positive, not %s", poll)}
			}
			start := e.now()
			b, raw, err := e.follow(cmd.Context(), args[0], poll)
			if err != nil {
				return err
			}
			if outDir != "" {
				return e.finish(cmd.Context(), b, raw, outDir, start)
			}
			if e.jsonOut() {
				err = e.printRaw(raw)
			} else {
				err = e.showBatch(b)
			}
			if err != nil {
				return err
			}
			return endedExit(b)
		},
	}
	cmd.Flags().DurationVar(&poll, "poll", time.Second, "how often to ask for the batch's progress")
	cmd.Flags().StringVar(&outDir, "output-dir", "", "download the output and error files into this directory once the batch ends")
	return cmd
}

// endedExit is the exit of a followed batch: nil when it completed.
func endedExit(b *batchObject) error {
	if b.Status == "completed" {
		return nil
	}
	return &exitError{code: ExitError}
}

// follow polls batch id every poll until it reaches a terminal status,
// drawing a progress line on stderr, and returns the final batch decoded
// and as the server wrote it. Failing polls are retried for followGiveUp
// unless the server answered a permanent error (such as 404).
func (e *env) follow(ctx context.Context, id string, poll time.Duration) (*batchObject, json.RawMessage, error) {
	p := &progress{e: e}
	path := "/v1/batches/" + url.PathEscape(id)
	var failingSince, modelChecked time.Time
	modelWarned := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			p.interrupted(id)
			return nil, nil, ctx.Err()
		case <-timer.C:
		}
		var b batchObject
		raw, err := e.call(ctx, http.MethodGet, path, nil, &b)
		switch {
		case err != nil && ctx.Err() != nil:
			p.interrupted(id)
			return nil, nil, ctx.Err()
		case err != nil && temporary(err):
			if failingSince.IsZero() {
				failingSince = e.now()
				p.note(fmt.Sprintf("Warning: %v (retrying)", err))
			}
			if e.now().Sub(failingSince) > followGiveUp {
				p.done()
				return nil, nil, fmt.Errorf("follow batch %s: gave up after %s: %w", id, followGiveUp, err)
			}
		case err != nil:
			p.done()
			return nil, nil, err
		default:
			failingSince = time.Time{}
			p.update(&b)
			if b.terminal() {
				p.done()
				return &b, raw, nil
			}
			if b.Status == "in_progress" && !modelWarned && e.now().Sub(modelChecked) >= modelCheckEvery {
				modelChecked = e.now()
				if served, known := e.modelServed(ctx, b.Model); known && !served {
					modelWarned = true
					p.note(fmt.Sprintf("Warning: no live agent serves model %s; the batch waits for one until it expires (%s)", b.Model, fmtTime(b.ExpiresAt)))
				}
			}
		}
		timer.Reset(poll)
	}
}

// modelCheckEvery is how often a batch being followed has its model
// looked up among the models live agents serve.
const modelCheckEvery = 30 * time.Second

// modelServed reports whether a live agent serves model (GET /v1/models);
// known is false when that could not be told.
func (e *env) modelServed(ctx context.Context, model string) (served, known bool) {
	if model == "" {
		return false, false
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if _, err := e.call(ctx, http.MethodGet, "/v1/models", nil, &list); err != nil {
		return false, false
	}
	for _, m := range list.Data {
		if m.ID == model {
			return true, true
		}
	}
	return false, true
}

// progress draws a batch's progress on stderr: redrawn in place on a
// terminal, a line every progressEvery (and on each status change)
// elsewhere.
type progress struct {
	e          *env
	samples    []sample
	lastPrint  time.Time
	lastStatus string
	drawn      bool // a line is on screen without its newline (terminal)
}

// sample is the number of finished requests at a time.
type sample struct {
	at   time.Time
	done int64
}

func (p *progress) update(b *batchObject) {
	now := p.e.now()
	done := b.RequestCounts.Completed + b.RequestCounts.Failed
	p.samples = append(p.samples, sample{at: now, done: done})
	for len(p.samples) > 2 && now.Sub(p.samples[1].at) >= rateWindow {
		p.samples = p.samples[1:]
	}
	line := progressLine(b, p.rate())
	switch {
	case p.e.tty:
		fmt.Fprintf(p.e.stderr, "\r%s\033[K", line)
		p.drawn = true
	case b.Status != p.lastStatus || now.Sub(p.lastPrint) >= progressEvery || b.terminal():
		fmt.Fprintln(p.e.stderr, line)
		p.lastPrint = now
	}
	p.lastStatus = b.Status
}

// rate is finished requests per second over the samples kept.
func (p *progress) rate() float64 {
	if len(p.samples) < 2 {
		return 0
	}
	first, last := p.samples[0], p.samples[len(p.samples)-1]
	span := last.at.Sub(first.at).Seconds()
	if span <= 0 || last.done < first.done {
		return 0
	}
	return float64(last.done-first.done) / span
}

// note prints a message on its own line.
func (p *progress) note(msg string) {
	p.done()
	fmt.Fprintln(p.e.stderr, msg)
}

// done ends the line being redrawn, if any.
func (p *progress) done() {
	if p.drawn {
		fmt.Fprintln(p.e.stderr)
		p.drawn = false
	}
}

func (p *progress) interrupted(id string) {
	p.note(fmt.Sprintf("Batch %s carries on in the cluster; follow it (and download its results) with: vbctl batches watch %s --output-dir DIR", id, id))
}

// progressLine renders "[#####.....] 5230/10000 done 12 failed  870 req/s
// status in_progress"; done counts completed and failed requests.
func progressLine(b *batchObject, rate float64) string {
	rc := b.RequestCounts
	done := rc.Completed + rc.Failed
	filled := 0
	if rc.Total > 0 {
		filled = int(min(done, rc.Total) * barWidth / rc.Total)
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", barWidth-filled)
	return fmt.Sprintf("[%s] %d/%d done %d failed %5.0f req/s  status %s", bar, done, rc.Total, rc.Failed, rate, b.Status)
}

// submitSummary is what submit --wait prints with -o json.
type submitSummary struct {
	Batch           json.RawMessage `json:"batch"`
	OutputPath      string          `json:"output_path,omitempty"`
	ErrorPath       string          `json:"error_path,omitempty"`
	DurationSeconds int64           `json:"duration_seconds"`
}

// finish downloads an ended batch's output and error files into outDir,
// prints the summary and returns the exit for the batch's status.
func (e *env) finish(ctx context.Context, b *batchObject, raw json.RawMessage, outDir string, start time.Time) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output dir: %w", err)
	}
	sum := submitSummary{Batch: raw}
	for _, f := range []struct {
		id, suffix string
		path       *string
	}{{b.OutputFileID, "output", &sum.OutputPath}, {b.ErrorFileID, "error", &sum.ErrorPath}} {
		if f.id == "" {
			continue
		}
		path := filepath.Join(outDir, fmt.Sprintf("%s_%s.jsonl", b.ID, f.suffix))
		n, err := e.download(ctx, f.id, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "Wrote %s (%s)\n", path, fmtBytes(n))
		*f.path = path
	}
	dur := e.now().Sub(start)
	if end := b.endedAt(); end > 0 && b.CreatedAt > 0 && end >= b.CreatedAt {
		dur = time.Duration(end-b.CreatedAt) * time.Second
	}
	sum.DurationSeconds = int64(dur.Round(time.Second) / time.Second)
	if e.jsonOut() {
		if err := e.printJSON(sum); err != nil {
			return err
		}
		return endedExit(b)
	}
	pairs := [][2]string{
		{"BATCH", b.ID},
		{"STATUS", b.Status},
		{"REQUESTS", fmt.Sprintf("%d total, %d completed, %d failed", b.RequestCounts.Total, b.RequestCounts.Completed, b.RequestCounts.Failed)},
		{"DURATION", fmtDuration(dur)},
	}
	if b.Usage != nil {
		pairs = append(pairs, [2]string{"TOKENS", fmtUsage(b.Usage)})
	}
	pairs = append(pairs, [2]string{"OUTPUT FILE", orDash(sum.OutputPath)}, [2]string{"ERROR FILE", orDash(sum.ErrorPath)})
	if err := e.fields(pairs); err != nil {
		return err
	}
	e.showBatchErrors(b)
	return endedExit(b)
}
