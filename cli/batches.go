package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

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
	CompletedAt      int64             `json:"completed_at"`
	ExpiresAt        int64             `json:"expires_at"`
	Metadata         map[string]string `json:"metadata"`
	RequestCounts    struct {
		Total     int64 `json:"total"`
		Completed int64 `json:"completed"`
		Failed    int64 `json:"failed"`
	} `json:"request_counts"`
	Usage *struct {
		InputTokens  int64 `json:"input_tokens"`
		OutputTokens int64 `json:"output_tokens"`
		TotalTokens  int64 `json:"total_tokens"`
	} `json:"usage"`
	Errors *struct {
		Data []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Param   string `json:"param"`
			Line    int64  `json:"line"`
		} `json:"data"`
	} `json:"errors"`
}

func (b *batchObject) terminal() bool {
	switch b.Status {
	case "completed", "failed", "expired", "cancelled":
		return true
	}
	return false
}

type batchList struct {
	Data    []batchObject `json:"data"`
	HasMore bool          `json:"has_more"`
	LastID  string        `json:"last_id"`
}

// createParams are the flags of batches create and submit.
type createParams struct {
	endpoint, window string
	metadata         []string
}

func (p *createParams) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.endpoint, "endpoint", "/v1/chat/completions", "endpoint of every request")
	cmd.Flags().StringVar(&p.window, "window", "24h", "completion window (24h, or minutes/hours such as 90m)")
	cmd.Flags().StringArrayVar(&p.metadata, "metadata", nil, "metadata key=value (repeatable)")
}

func (p *createParams) body(inputFile string) (map[string]any, error) {
	body := map[string]any{"input_file_id": inputFile, "endpoint": p.endpoint, "completion_window": p.window}
	if len(p.metadata) > 0 {
		md := map[string]string{}
		for _, kv := range p.metadata {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("--metadata %q: want key=value", kv)
			}
			md[k] = v
		}
		body["metadata"] = md
	}
	return body, nil
}

func batchesCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "batches", Short: "Create, watch and cancel batches"}
	var cp createParams
	var input string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a batch from an uploaded file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, err := cp.body(input)
			if err != nil {
				return err
			}
			var b batchObject
			if ok, err := e.get(cmd, http.MethodPost, "/v1/batches", body, &b); !ok || err != nil {
				return err
			}
			return e.showBatch(&b)
		},
	}
	cp.flags(create)
	create.Flags().StringVar(&input, "input-file", "", "id of the uploaded input file")
	_ = create.MarkFlagRequired("input-file")

	var limit int
	var after string
	list := &cobra.Command{
		Use:   "list",
		Short: "List batches, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if limit > 0 {
				q.Set("limit", fmt.Sprint(limit))
			}
			if after != "" {
				q.Set("after", after)
			}
			var l batchList
			if ok, err := e.get(cmd, http.MethodGet, "/v1/batches?"+q.Encode(), nil, &l); !ok || err != nil {
				return err
			}
			var rows [][]string
			for _, b := range l.Data {
				rows = append(rows, []string{b.ID, b.Status, orDash(b.Model), counts(&b), unixTime(b.CreatedAt)})
			}
			e.table([]string{"ID", "STATUS", "MODEL", "DONE/FAILED/TOTAL", "CREATED"}, rows)
			if l.HasMore {
				fmt.Fprintf(e.stdout, "more: vbctl batches list --after %s\n", l.LastID)
			}
			return nil
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "most batches to list (1-100)")
	list.Flags().StringVar(&after, "after", "", "list after this batch id")

	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show one batch",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var b batchObject
			if ok, err := e.get(cmd, http.MethodGet, "/v1/batches/"+url.PathEscape(args[0]), nil, &b); !ok || err != nil {
				return err
			}
			return e.showBatch(&b)
		},
	}
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a batch",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var b batchObject
			if ok, err := e.get(cmd, http.MethodPost, "/v1/batches/"+url.PathEscape(args[0])+"/cancel", nil, &b); !ok || err != nil {
				return err
			}
			return e.showBatch(&b)
		},
	}
	cmd.AddCommand(create, list, get, cancel, submitCmd(e), watchCmd(e))
	return cmd
}

func counts(b *batchObject) string {
	return fmt.Sprintf("%d/%d/%d", b.RequestCounts.Completed, b.RequestCounts.Failed, b.RequestCounts.Total)
}

func (e *env) showBatch(b *batchObject) error {
	if e.output == "json" {
		return e.printJSON(b)
	}
	rows := [][]string{
		{"id", b.ID}, {"status", b.Status}, {"endpoint", b.Endpoint}, {"model", orDash(b.Model)},
		{"input_file_id", b.InputFileID}, {"output_file_id", orDash(b.OutputFileID)}, {"error_file_id", orDash(b.ErrorFileID)},
		{"requests (done/failed/total)", counts(b)}, {"created_at", unixTime(b.CreatedAt)}, {"expires_at", unixTime(b.ExpiresAt)},
	}
	if b.Usage != nil {
		rows = append(rows, []string{"tokens (in/out/total)", fmt.Sprintf("%d/%d/%d", b.Usage.InputTokens, b.Usage.OutputTokens, b.Usage.TotalTokens)})
	}
	e.table([]string{"FIELD", "VALUE"}, rows)
	if b.Errors != nil && len(b.Errors.Data) > 0 {
		fmt.Fprintln(e.stdout, "errors:")
		for _, er := range b.Errors.Data {
			fmt.Fprintf(e.stdout, "  line %d: %s: %s\n", er.Line, er.Code, er.Message)
		}
	}
	return nil
}

func decodeJSON(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
