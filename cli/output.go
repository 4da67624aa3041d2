package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// jsonOut reports whether -o json was asked for.
func (e *env) jsonOut() bool { return e.output == "json" }

// call sends a JSON request and returns the answer as the server wrote it,
// decoded into out as well when out is not nil.
func (e *env) call(ctx context.Context, method, path string, in, out any) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := e.client.Do(ctx, method, path, in, &raw); err != nil {
		return nil, err
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return raw, nil
}

// printRaw pretty-prints a JSON answer keeping the server's field order.
func (e *env) printRaw(raw json.RawMessage) error {
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("print answer: %w", err)
	}
	buf.WriteByte('\n')
	_, err := e.stdout.Write(buf.Bytes())
	return err
}

// printJSON pretty-prints v.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("print json: %w", err)
	}
	return nil
}

// table writes a header and rows in aligned columns.
func (e *env) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fields writes name/value pairs, one a line, values aligned.
func (e *env) fields(pairs [][2]string) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for _, p := range pairs {
		fmt.Fprintf(tw, "%s\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

// fmtTime formats unix seconds as UTC; zero (null on the wire) is "-".
func fmtTime(sec int64) string {
	if sec == 0 {
		return "-"
	}
	return time.Unix(sec, 0).UTC().Format("2006-01-02 15:04:05Z")
}

// fmtAge formats how long before now unix second sec was ("4s ago").
func fmtAge(now time.Time, sec int64) string {
	if sec == 0 {
		return "never"
	}
	d := now.Sub(time.Unix(sec, 0))
	if d < 0 {
		d = 0
	}
	return fmtDuration(d) + " ago"
}

// fmtDuration formats d to the second, largest units first ("1h2m3s").
func fmtDuration(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Minute {
		return d.String()
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// fmtBytes formats a size in IEC units ("1.5 MiB").
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// orDash returns s, or "-" when s is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
