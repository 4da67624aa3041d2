package validate

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func requestLines(n int, url string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"custom_id":"r%d","method":"POST","url":"%s","body":{"model":"m","max_tokens":%d}}`+"\n", i, url, i)
	}
	return b.String()
}

func TestFileCheckRoundTrip(t *testing.T) {
	opts := Options{ChunkSize: 7, MaxTokens: 1000}
	for _, n := range []int{1, 6, 7, 8, 50} {
		file := requestLines(n, "/v1/chat/completions") + "\n\n"
		pre, err := Validate(strings.NewReader(file), "", opts)
		if err != nil {
			t.Fatal(err)
		}
		fc := FileCheck(pre, opts)
		if fc == nil {
			t.Fatalf("%d lines: no check for a valid file: %v", n, pre.Errors)
		}
		want, err := Validate(strings.NewReader(file), "/v1/chat/completions", opts)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := FromCheck(fc, "/v1/chat/completions", opts)
		if !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("%d lines: FromCheck = %+v, %v; want what Validate gives: %+v", n, got, ok, want)
		}
	}
}

func TestFromCheckRefusesWhatItCannotVouchFor(t *testing.T) {
	opts := Options{ChunkSize: 7, MaxTokens: 1000}
	pre, err := Validate(strings.NewReader(requestLines(20, "/v1/chat/completions")), "", opts)
	if err != nil {
		t.Fatal(err)
	}
	fc := FileCheck(pre, opts)
	cases := map[string]struct {
		endpoint string
		opts     Options
	}{
		"other endpoint":       {"/v1/embeddings", opts},
		"other chunk size":     {"/v1/chat/completions", Options{ChunkSize: 8, MaxTokens: 1000}},
		"tighter token cap":    {"/v1/chat/completions", Options{ChunkSize: 7, MaxTokens: 10}},
		"fewer requests":       {"/v1/chat/completions", Options{ChunkSize: 7, MaxTokens: 1000, MaxRequests: 10}},
		"other max line bytes": {"/v1/chat/completions", Options{ChunkSize: 7, MaxTokens: 1000, MaxLineBytes: 100}},
		"a cap on n":           {"/v1/chat/completions", Options{ChunkSize: 7, MaxTokens: 1000, MaxN: 2}},
	}
	for name, c := range cases {
		if _, ok := FromCheck(fc, c.endpoint, c.opts); ok {
			t.Errorf("%s: FromCheck vouched for the file", name)
		}
	}
	fc.ChunkOffsets = fc.ChunkOffsets[1:]
	if _, ok := FromCheck(fc, "/v1/chat/completions", opts); ok {
		t.Error("FromCheck accepted a check with the wrong number of offsets")
	}
	if _, ok := FromCheck(nil, "/v1/chat/completions", opts); ok {
		t.Error("FromCheck accepted no check")
	}
}

func TestFileCheckOnlyForValidFiles(t *testing.T) {
	bad := requestLines(3, "/v1/chat/completions") + "not json\n"
	res, err := Validate(strings.NewReader(bad), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if fc := FileCheck(res, Options{}); fc != nil {
		t.Fatalf("check kept for an invalid file: %+v", fc)
	}
}
