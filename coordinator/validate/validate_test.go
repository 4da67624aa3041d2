package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

const ep = "/v1/chat/completions"

// req builds one valid request line.
func req(id, model string) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"hi"}]}}`, id, model)
}

type wantErr struct {
	code, param string
	line        int64
}

func errsOf(res *Result) []wantErr {
	out := make([]wantErr, 0, len(res.Errors))
	for _, e := range res.Errors {
		out = append(out, wantErr{e.Code, e.Param, e.Line})
	}
	return out
}

func TestValidateErrors(t *testing.T) {
	ok1, ok2 := req("a", "m"), req("b", "m")
	cases := []struct {
		name string
		in   string
		opts Options
		want []wantErr
	}{
		{"empty", "", Options{}, []wantErr{{CodeEmptyFile, "", 0}}},
		{"only blank lines", "\n \n\r\n", Options{}, []wantErr{{CodeEmptyFile, "", 0}}},
		{"invalid json", ok1 + "\n{not json\n", Options{}, []wantErr{{CodeInvalidJSONLine, "", 2}}},
		{"json but not object", "[1,2]\nnull\n\"s\"\n", Options{}, []wantErr{
			{CodeInvalidJSONLine, "", 1}, {CodeInvalidJSONLine, "", 2}, {CodeInvalidJSONLine, "", 3}}},
		{"blank line in the middle", ok1 + "\n\n" + ok2 + "\n", Options{}, []wantErr{{CodeInvalidJSONLine, "", 2}}},
		{"missing custom_id", ok1 + "\n" + `{"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeMissingCustomID, "custom_id", 2}}},
		{"empty custom_id", `{"custom_id":"","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeMissingCustomID, "custom_id", 1}}},
		{"custom_id wrong case is not custom_id", `{"Custom_ID":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeMissingCustomID, "custom_id", 1}}},
		{"numeric custom_id", `{"custom_id":7,"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeInvalidCustomID, "custom_id", 1}}},
		{"duplicate custom_id", ok1 + "\n" + ok2 + "\n" + req("a", "m") + "\n", Options{},
			[]wantErr{{CodeDuplicateCustomID, "custom_id", 3}}},
		{"method GET", `{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeInvalidMethod, "method", 1}}},
		{"method missing", `{"custom_id":"a","url":"/v1/chat/completions","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeInvalidMethod, "method", 1}}},
		{"url missing", `{"custom_id":"a","method":"POST","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeInvalidURL, "url", 1}}},
		{"url other endpoint", `{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"m"}}`, Options{},
			[]wantErr{{CodeMismatchedEndpoint, "url", 1}}},
		{"body missing", `{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}`, Options{},
			[]wantErr{{CodeMissingModel, "body.model", 1}}},
		{"body not object", `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":"x"}`, Options{},
			[]wantErr{{CodeMissingModel, "body.model", 1}}},
		{"model missing", `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}`, Options{},
			[]wantErr{{CodeMissingModel, "body.model", 1}}},
		{"two models", ok1 + "\n" + req("b", "other") + "\n", Options{}, []wantErr{{CodeMismatchedModel, "body.model", 2}}},
		{"stream true", `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":true}}`, Options{},
			[]wantErr{{CodeUnsupportedStream, "body.stream", 1}}},
		{"too many", ok1 + "\n" + ok2 + "\n" + req("c", "m") + "\n", Options{MaxRequests: 2},
			[]wantErr{{CodeExceededMaxRequests, "", 0}}},
		{"line too long", ok1 + "\n" + req("b", strings.Repeat("x", 200)) + "\n" + req("c", "m"), Options{MaxLineBytes: 150},
			[]wantErr{{CodeLineTooLong, "", 2}}},
		{"error list capped", "x\nx\nx\nx\nx\n", Options{MaxErrors: 3}, []wantErr{
			{CodeInvalidJSONLine, "", 1}, {CodeInvalidJSONLine, "", 2}, {CodeInvalidJSONLine, "", 3}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Validate(strings.NewReader(tc.in), ep, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got := errsOf(res)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("errors = %v, want %v", got, tc.want)
			}
			for _, e := range res.Errors {
				if e.Message == "" {
					t.Errorf("error %s has no message", e.Code)
				}
			}
		})
	}
}

// urlReq builds a request line with the given url.
func urlReq(id, url string) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":%q,"body":{"model":"m"}}`, id, url)
}

func TestValidateAdoptsEndpoint(t *testing.T) {
	cases := []struct {
		name, in, endpoint string
		want               []wantErr
		wantEndpoint       string
	}{
		{"first url adopted", urlReq("a", "/v1/embeddings") + "\n" + urlReq("b", "/v1/embeddings") + "\n" + urlReq("c", ep) + "\n", "",
			[]wantErr{{CodeMismatchedEndpoint, "url", 3}}, "/v1/embeddings"},
		{"lines without a url do not count", "{oops\n" + `{"custom_id":"a","method":"POST","body":{"model":"m"}}` + "\n" +
			`{"method":"POST","url":"/v1/embeddings"}` + "\n" + urlReq("b", "/v1/completions") + "\n" + urlReq("c", "/v1/completions"), "",
			[]wantErr{{CodeInvalidJSONLine, "", 1}, {CodeInvalidURL, "url", 2}, {CodeMissingCustomID, "custom_id", 3}}, "/v1/completions"},
		{"the given endpoint is kept", urlReq("a", "/v1/embeddings") + "\n", ep,
			[]wantErr{{CodeMismatchedEndpoint, "url", 1}}, ep},
		{"no url at all", `{"custom_id":"a","method":"POST"}`, "",
			[]wantErr{{CodeInvalidURL, "url", 1}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Validate(strings.NewReader(tc.in), tc.endpoint, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := errsOf(res); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("errors = %v, want %v", got, tc.want)
			}
			if res.Endpoint != tc.wantEndpoint {
				t.Fatalf("endpoint %q, want %q", res.Endpoint, tc.wantEndpoint)
			}
		})
	}
	// The mismatch names the adopted endpoint.
	res, err := Validate(strings.NewReader(urlReq("a", "/v1/embeddings")+"\n"+urlReq("b", ep)), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := `The url "/v1/chat/completions" does not match the batch endpoint "/v1/embeddings".`; len(res.Errors) != 1 || res.Errors[0].Message != want {
		t.Fatalf("errors %v, want the message %s", res.Errors, want)
	}
}

func TestValidateChunks(t *testing.T) {
	var lines []string
	for i := range 7 {
		lines = append(lines, req(fmt.Sprintf("r%d", i), "m"))
	}
	for _, tail := range []string{"", "\n", "\n\n", "\r\n \n"} {
		in := strings.Join(lines, "\n") + tail
		res, err := Validate(strings.NewReader(in), ep, Options{ChunkSize: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Errors) != 0 {
			t.Fatalf("tail %q: errors %v", tail, errsOf(res))
		}
		if res.Model != "m" || res.Total != 7 {
			t.Fatalf("tail %q: model %q total %d", tail, res.Model, res.Total)
		}
		n := int64(len(lines[0]) + 1) // every line has the same length
		want := []Chunk{
			{0, 3, 0, 3 * n},
			{3, 6, 3 * n, 6 * n},
			{6, 7, 6 * n, 7 * n},
		}
		switch tail {
		case "":
			want[2].EndOffset = 7*n - 1 // no newline after the last line
		case "\r\n \n":
			want[2].EndOffset = 7*n + 1 // the '\r' belongs to the last line
		}
		if fmt.Sprint(res.Chunks) != fmt.Sprint(want) {
			t.Fatalf("tail %q: chunks %v, want %v", tail, res.Chunks, want)
		}
		// Each chunk's byte range holds exactly its lines.
		for _, c := range res.Chunks {
			got := strings.Split(strings.TrimRight(in[c.StartOffset:c.EndOffset], "\r\n"), "\n")
			if fmt.Sprint(got) != fmt.Sprint(lines[c.StartLine:c.EndLine]) {
				t.Fatalf("chunk %v holds %q", c, got)
			}
		}
	}
}

func TestValidateExactChunkMultiple(t *testing.T) {
	in := req("a", "m") + "\n" + req("b", "m") + "\n"
	res, err := Validate(strings.NewReader(in), ep, Options{ChunkSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := []Chunk{{0, 2, 0, int64(len(in))}}
	if fmt.Sprint(res.Chunks) != fmt.Sprint(want) {
		t.Fatalf("chunks %v, want %v", res.Chunks, want)
	}
}

func TestValidateLongValidLine(t *testing.T) {
	// A line far longer than bufio's buffer but under the cap is read whole.
	long := req("a", "m")
	long = strings.Replace(long, `"hi"`, `"`+strings.Repeat("y", 300<<10)+`"`, 1)
	res, err := Validate(strings.NewReader(long+"\n"+req("b", "m")+"\n"), ep, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 || res.Total != 2 {
		t.Fatalf("errors %v total %d", errsOf(res), res.Total)
	}
	if res.Chunks[0].EndOffset != int64(len(long)+1+len(req("b", "m"))+1) {
		t.Fatalf("chunks %v", res.Chunks)
	}
}

type failingReader struct{ after int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := copy(p, bytes.Repeat([]byte(req("a", "m")+"\n"), 1)[:min(len(p), f.after)])
	f.after -= n
	return n, nil
}

func TestValidateReaderError(t *testing.T) {
	if _, err := Validate(&failingReader{after: 10}, ep, Options{}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("err = %v", err)
	}
}

// TestValidateGolden pins the exact errors (messages included) of a file
// with one problem per line.
func TestValidateGolden(t *testing.T) {
	in, err := os.ReadFile(filepath.Join("testdata", "bad.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Validate(bytes.NewReader(in), ep, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(res.Errors, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	golden := filepath.Join("testdata", "bad.errors.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("errors differ from %s (rerun with -update after checking):\n%s", golden, got)
	}
}

func TestScanCustomIDs(t *testing.T) {
	in := req("a", "m") + "\n" + req("b", "m") + "\n" + req("c", "m") + "\n" + req("d", "m") + "\n"
	var got []string
	err := ScanCustomIDs(strings.NewReader(in), 1, 3, 0, func(line int64, id string) {
		got = append(got, fmt.Sprintf("%d:%s", line, id))
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "[1:b 2:c]"; fmt.Sprint(got) != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	// It stops at line to: the broken line after it is never parsed.
	if err := ScanCustomIDs(strings.NewReader(req("a", "m")+"\nbroken\n"), 0, 1, 0, func(int64, string) {}); err != nil {
		t.Fatal(err)
	}
	if err := ScanCustomIDs(strings.NewReader(req("a", "m")+"\nbroken\n"), 0, 2, 0, func(int64, string) {}); err == nil {
		t.Fatal("a broken line in range must be an error")
	}
	if err := ScanCustomIDs(strings.NewReader(req("a", "m")), 0, 2, 0, func(int64, string) {}); err == nil {
		t.Fatal("a range past the end must be an error")
	}
	// A line longer than the default, in a file validated with a larger
	// cap, is scanned with that cap.
	long := `{"custom_id":"big","method":"POST","url":"/v1/chat/completions","body":{"model":"m","pad":"` + strings.Repeat("x", DefaultMaxLineBytes) + `"}}` + "\n"
	if err := ScanCustomIDs(strings.NewReader(long), 0, 1, 0, func(int64, string) {}); err == nil {
		t.Fatal("a line over the default cap scanned with it must be an error")
	}
	var id string
	if err := ScanCustomIDs(strings.NewReader(long), 0, 1, 2*DefaultMaxLineBytes, func(_ int64, cid string) { id = cid }); err != nil || id != "big" {
		t.Fatalf("a line under the file's own cap: id %q, %v", id, err)
	}
}

func TestExpiredLine(t *testing.T) {
	got := ExpiredLine("batch_abc", `id "1" <&>`, 3)
	golden := filepath.Join("testdata", "expired_line.golden.jsonl")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %s want %s", got, want)
	}
	var v struct {
		ID       string          `json:"id"`
		CustomID string          `json:"custom_id"`
		Response json.RawMessage `json:"response"`
		Error    *vbatchv1.BatchError
	}
	if err := json.Unmarshal(got, &v); err != nil {
		t.Fatal(err)
	}
	if v.CustomID != `id "1" <&>` || string(v.Response) != "null" || v.Error.Code != "batch_expired" || !strings.HasPrefix(v.ID, "batch_req_") {
		t.Fatalf("decoded %+v", v)
	}
	if bytes.Equal(got, ExpiredLine("batch_abc", `id "1" <&>`, 4)) {
		t.Fatal("different seq must give a different request id")
	}
}

var _ io.Reader = (*failingReader)(nil)
