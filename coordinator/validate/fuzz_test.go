package validate

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzValidate(f *testing.F) {
	f.Add([]byte(req("a", "m")+"\n"+req("b", "m")+"\n"), uint8(1))
	f.Add([]byte(req("a", "m")+"\n\n"+req("b", "m")), uint8(2))
	f.Add([]byte("\n\n\n"), uint8(3))
	f.Add([]byte("{\"custom_id\":\"a\"}\r\n[]\nnull\n"), uint8(1))
	f.Add([]byte(req("a", "m")+"\n"+req("a", "n")+"\n"+req("b", "m")+"\r\n \n"), uint8(2))
	f.Add([]byte(strings.Repeat(req("x", "m")+"\n", 3)), uint8(0))
	f.Add([]byte(body("a", `"max_tokens":100,"n":2`)+"\n"+body("b", `"max_completion_tokens":101`)+"\n"), uint8(1))
	f.Add([]byte(body("a", `"n":"3","best_of":null`)+"\n"+body("b", `"min_tokens":1e999`)), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		opts := Options{ChunkSize: int(chunk%5) + 1, MaxRequests: 40, MaxErrors: 8, MaxLineBytes: 256, MaxTokens: 100, MaxN: 2}
		res, err := Validate(bytes.NewReader(data), ep, opts)
		if err != nil {
			t.Fatalf("a bytes.Reader never fails, got %v", err)
		}
		if len(res.Errors) > opts.MaxErrors {
			t.Fatalf("%d errors listed, cap %d", len(res.Errors), opts.MaxErrors)
		}
		prev := int64(0)
		for _, e := range res.Errors {
			if e.Code == "" || e.Message == "" || e.Line < 0 {
				t.Fatalf("malformed error %+v", e)
			}
			if e.Line != 0 {
				if e.Line <= prev {
					t.Fatalf("error lines not increasing: %d after %d", e.Line, prev)
				}
				prev = e.Line
			}
		}
		checkChunks(t, data, res, int64(opts.ChunkSize))
		if len(res.Errors) > 0 {
			return
		}
		if res.Total == 0 || res.Total > int64(opts.MaxRequests) || res.Model == "" {
			t.Fatalf("valid result with total %d model %q", res.Total, res.Model)
		}
		// Every request line yields its custom_id, all distinct.
		seen := map[string]bool{}
		var n int64
		err = ScanCustomIDs(bytes.NewReader(data), 0, res.Total, 0, func(line int64, id string) {
			if line != n || seen[id] {
				t.Fatalf("line %d id %q (expected line %d, seen %v)", line, id, n, seen[id])
			}
			seen[id] = true
			n++
		})
		if err != nil || n != res.Total {
			t.Fatalf("scan: %v, %d of %d ids", err, n, res.Total)
		}
		// A valid file asks for no more than the caps on any line.
		for i, l := range bytes.Split(data, []byte("\n")) {
			if isBlank(l) {
				continue
			}
			obj, _ := parseObject(l)
			b, _ := parseObject(obj["body"])
			if ce := CheckCaps(b, opts.MaxTokens, opts.MaxN); ce != nil {
				t.Fatalf("line %d valid but over a cap: %v", i+1, ce)
			}
		}
	})
}

// checkChunks asserts the chunks tile lines [0, Total) and their bytes.
func checkChunks(t *testing.T, data []byte, res *Result, size int64) {
	t.Helper()
	var line, off int64
	for i, c := range res.Chunks {
		if c.StartLine != line || c.StartOffset != off && i > 0 {
			t.Fatalf("chunk %d %+v does not continue at line %d offset %d", i, c, line, off)
		}
		if c.EndLine <= c.StartLine || c.EndLine-c.StartLine > size || c.EndOffset <= c.StartOffset || c.EndOffset > int64(len(data)) {
			t.Fatalf("chunk %d %+v malformed (size %d, file %d bytes)", i, c, size, len(data))
		}
		if len(res.Errors) == 0 {
			// The byte range holds exactly the chunk's lines.
			b := data[c.StartOffset:c.EndOffset]
			lines := int64(bytes.Count(b, []byte("\n")))
			if b[len(b)-1] != '\n' {
				lines++
			}
			if lines != c.EndLine-c.StartLine {
				t.Fatalf("chunk %d %+v holds %d lines", i, c, lines)
			}
		}
		line, off = c.EndLine, c.EndOffset
	}
	if line != res.Total {
		t.Fatalf("chunks end at line %d, total %d", line, res.Total)
	}
	if len(res.Chunks) > 0 && res.Chunks[0].StartOffset != 0 {
		t.Fatalf("first chunk starts at offset %d", res.Chunks[0].StartOffset)
	}
}
