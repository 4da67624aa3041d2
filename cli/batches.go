package cli

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// batchObject is OpenAI's Batch object, the fields vbctl shows. Timestamps
// and ids that are null on the wire decode as zero.
type batchObject struct {
	ID               string            `json:"id"`
	Status           string            `json:"status"`
	Endpoint         string            `json:"endpoint"`
	Model            string            `json:"model"`
	InputFileID      string            `json:"input_file_id"`
	OutputFileID     string            `json:"output_file_id"`
	ErrorFileID      string            `json:"error_file_id"`
	CompletionWindow string            `json:"completion_window"`
	CreatedAt        int64             `json:"created_at"`
	InProgressAt     int64             `json:"in_progress_at"`
	ExpiresAt        int64             `json:"expires_at"`
	FinalizingAt     int64             `json:"finalizing_at"`
	CompletedAt      int64             `json:"completed_at"`
	FailedAt         int64             `json:"failed_at"`
	ExpiredAt        int64             `json:"expired_at"`
	CancellingAt     int64             `json:"cancelling_at"`
	CancelledAt      int64             `json:"cancelled_at"`
	Metadata         map[string]string `json:"metadata"`
	RequestCounts    requestCounts     `json:"request_counts"`
	Usage            *batchUsage       `json:"usage"`
	Errors           *struct {
		Data []batchError `json:"data"`
	} `json:"errors"`
}

type requestCounts struct {
	Total     int64 `json:"total"`
	Completed int64 `json:"completed"`
	Failed    int64 `json:"failed"`
}

type batchUsage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	TotalTokens  int64 `json:"total_tokens"`
}

type batchError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Param   string `json:"param"`
	Line    int64  `json:"line"`
}

// terminal reports whether the batch reached a status it never leaves.
func (b *batchObject) terminal() bool {
	switch b.Status {
	case "completed", "failed", "expired", "cancelled":
		return true
	}
	return false
}

// endedAt is when the batch reached its terminal status (0 if it has not).
func (b *batchObject) endedAt() int64 {
	switch b.Status {
	case "completed":
		return b.CompletedAt
	case "failed":
		return b.FailedAt
	case "expired":
		return b.ExpiredAt
	case "cancelled":
		return b.CancelledAt
	}
	return 0
}

func (b *batchObject) errorList() []batchError {
	if b.Errors == nil {
		return nil
	}
	return b.Errors.Data
}

// batchList is the answer of GET /v1/batches.
type batchList struct {
	Data    []batchObject `json:"data"`
	HasMore bool          `json:"has_more"`
	LastID  string        `json:"last_id"`
}

// createParams are the flags batches create and submit share.
type createParams struct {
	endpoint, window string
	metadata         []string
}

func (p *createParams) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.endpoint, "endpoint", "/v1/chat/completions", "endpoint every request of the batch goes to")
	cmd.Flags().StringVar(&p.window, "window", "24h", "completion window")
	cmd.Flags().StringArrayVar(&p.metadata, "metadata", nil, "metadata key=value (repeatable)")
}

// windowFormat is a completion window as the API takes it: a whole number
// of minutes or hours (the server checks the range).
var windowFormat = regexp.MustCompile(`^[1-9][0-9]{0,6}[mh]$`)

// body is the JSON of POST /v1/batches.
func (p *createParams) body(inputFileID string) (map[string]any, error) {
	if !windowFormat.MatchString(p.window) {
		return nil, fmt.Errorf("--window %q: want a whole number of minutes or hours, such as 24h or 90m", p.window)
	}
	body := map[string]any{"input_file_id": inputFileID, "endpoint": p.endpoint, "completion_window": p.window}
	if len(p.metadata) > 0 {
		md := make(map[string]string, len(p.metadata))
		for _, kv := range p.metadata {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("--metadata %q: want key=value", kv)
			}
			md[k] = v
		}
		body["metadata"] = md
	}
	return body, nil
}

func batchesCmd(e *env) *cobra.Command {
	cmd := groupCmd("batches", "Create, follow and cancel batches")
	cmd.AddCommand(batchesCreateCmd(e), batchesListCmd(e), batchesGetCmd(e), batchesCancelCmd(e),
		batchesSubmitCmd(e), batchesWatchCmd(e))
	return cmd
}

func batchesCreateCmd(e *env) *cobra.Command {
	var cp createParams
	var input string
	cmd := &cobra.Command{
		Use:   "create --input-file ID",
		Short: "Create a batch from an uploaded input file",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, err := cp.body(input)
			if err != nil {
				return &usageError{cmd: cmd.CommandPath(), err: err}
			}
			var b batchObject
			raw, err := e.call(cmd.Context(), http.MethodPost, "/v1/batches", body, &b)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			return e.showBatch(&b)
		},
	}
	cp.addFlags(cmd)
	cmd.Flags().StringVar(&input, "input-file", "", "id of the uploaded input file (required)")
	_ = cmd.MarkFlagRequired("input-file")
	return cmd
}

func batchesListCmd(e *env) *cobra.Command {
	var limit int
	var after string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List batches, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			setNonEmpty(q, "after", after)
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var l batchList
			raw, err := e.call(cmd.Context(), http.MethodGet, withQuery("/v1/batches", q), nil, &l)
			if err != nil {
				return err
			}
			if e.jsonOut() {
				return e.printRaw(raw)
			}
			rows := make([][]string, 0, len(l.Data))
			for _, b := range l.Data {
				rows = append(rows, []string{b.ID, b.Status, orDash(b.Model), progressCounts(&b), fmtTime(b.CreatedAt)})
			}
			if err := e.table([]string{"ID", "STATUS", "MODEL", "DONE/FAILED/TOTAL", "CREATED"}, rows); err != nil {
				return err
			}
			if l.HasMore {
				fmt.Fprintf(e.stderr, "More batches: vbctl batches list --after %s\n", l.LastID)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "most batches to list, 1 to 100 (server default when 0)")
	cmd.Flags().StringVar(&after, "after", "", "list the batches after this batch id")
	return cmd
}

func batchesGetCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one batch, with its errors",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.batchAction(cmd, http.MethodGet, "/v1/batches/"+url.PathEscape(args[0]))
		},
	}
}

func batchesCancelCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a batch; requests already done stay in its output",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.batchAction(cmd, http.MethodPost, "/v1/batches/"+url.PathEscape(args[0])+"/cancel")
		},
	}
}

// batchAction sends a body-less request answered by a Batch and shows it.
func (e *env) batchAction(cmd *cobra.Command, method, path string) error {
	var b batchObject
	raw, err := e.call(cmd.Context(), method, path, nil, &b)
	if err != nil {
		return err
	}
	if e.jsonOut() {
		return e.printRaw(raw)
	}
	return e.showBatch(&b)
}

// progressCounts is "completed/failed/total".
func progressCounts(b *batchObject) string {
	rc := b.RequestCounts
	return fmt.Sprintf("%d/%d/%d", rc.Completed, rc.Failed, rc.Total)
}

// showBatch prints a batch's key fields, then its errors one a line.
func (e *env) showBatch(b *batchObject) error {
	pairs := [][2]string{
		{"ID", b.ID},
		{"STATUS", b.Status},
		{"ENDPOINT", b.Endpoint},
		{"MODEL", orDash(b.Model)},
		{"WINDOW", orDash(b.CompletionWindow)},
		{"INPUT FILE", b.InputFileID},
		{"OUTPUT FILE", orDash(b.OutputFileID)},
		{"ERROR FILE", orDash(b.ErrorFileID)},
		{"REQUESTS", fmt.Sprintf("%d total, %d completed, %d failed", b.RequestCounts.Total, b.RequestCounts.Completed, b.RequestCounts.Failed)},
	}
	if b.Usage != nil && b.Usage.TotalTokens > 0 {
		pairs = append(pairs, [2]string{"TOKENS", fmtUsage(b.Usage)})
	}
	pairs = append(pairs, [2]string{"CREATED", fmtTime(b.CreatedAt)})
	for _, t := range []struct {
		name string
		at   int64
	}{
		{"IN PROGRESS", b.InProgressAt}, {"FINALIZING", b.FinalizingAt}, {"COMPLETED", b.CompletedAt},
		{"FAILED", b.FailedAt}, {"EXPIRED", b.ExpiredAt}, {"CANCELLING", b.CancellingAt}, {"CANCELLED", b.CancelledAt},
	} {
		if t.at != 0 {
			pairs = append(pairs, [2]string{t.name, fmtTime(t.at)})
		}
	}
	if !b.terminal() {
		pairs = append(pairs, [2]string{"EXPIRES", fmtTime(b.ExpiresAt)})
	}
	for _, k := range slices.Sorted(maps.Keys(b.Metadata)) {
		pairs = append(pairs, [2]string{"METADATA " + k, b.Metadata[k]})
	}
	if err := e.fields(pairs); err != nil {
		return err
	}
	e.showBatchErrors(b)
	return nil
}

// showBatchErrors lists a batch's errors (why it failed validation or was
// cut short), if it has any.
func (e *env) showBatchErrors(b *batchObject) {
	if errs := b.errorList(); len(errs) > 0 {
		fmt.Fprintf(e.stdout, "ERRORS (%d):\n", len(errs))
		for _, er := range errs {
			where := ""
			if er.Line > 0 {
				where = fmt.Sprintf("line %d: ", er.Line)
			}
			if er.Param != "" {
				where += er.Param + ": "
			}
			fmt.Fprintf(e.stdout, "  %s%s: %s\n", where, er.Code, er.Message)
		}
	}
}

func fmtUsage(u *batchUsage) string {
	return fmt.Sprintf("%d in, %d out, %d total", u.InputTokens, u.OutputTokens, u.TotalTokens)
}
