package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// This file checks the scanner against encoding/json and Validate against
// referenceValidate (reference_test.go), the map-based implementation it
// replaced: on every input both must give the same Result.

// diffLines are single request lines that stress the corners where a hand
// scanner could part from encoding/json.
var diffLines = []string{
	req("a", "m"),
	// Escapes in member names and values.
	`{"custom\u005fid":"a","\u006dethod":"POST","ur\u006c":"/v1/chat/completions","b\u006fdy":{"mod\u0065l":"m"}}`,
	`{"custom_id":"a\"b\\c\/\u00e9\ud83d\ude00","method":"P\u004fST","url":"\/v1\/chat\/completions","body":{"model":"m\n"}}`,
	`{"custom_id":"\u0000","method":"POST","url":"/v1/chat/completions","body":{"model":"\u006d"}}`,
	`{"custom_id\u0000":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"\u0063\u0075\u0073\u0074\u006f\u006d\u005f\u0069\u0064":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_completion_tokens\u0041":9,"max_completion_tok\u0065ns":99999}}`,
	`{"custom_id":"\ud800","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"\ufffd","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"\ud800\u0041","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"\uD83D\uDE00","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	// Duplicate members: the last counts, the body's members included.
	`{"custom_id":"a","custom_id":"b","method":"GET","method":"POST","url":"x","url":"/v1/chat/completions","body":{"model":"m"},"body":{"model":"n","model":"m"}}`,
	`{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":true},"body":{"model":"m"}}`,
	`{"custom_id":"d","method":"POST","url":"/v1/chat/completions","body":{"model":"m"},"body":null}`,
	`{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":{"model":"m"},"body":[{"model":"m"}]}`,
	`{"custom_id":"f","method":"POST","url":"/v1/chat/completions","body":{"model":"m","n":9,"n":1}}`,
	`{"custom_id":7,"custom_id":"g","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	// Invalid UTF-8, which encoding/json accepts and decodes to U+FFFD.
	"{\"custom_id\":\"a\xff\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}",
	"{\"custom_id\":\"a\xef\xbf\xbd\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}",
	"{\"custom_id\xff\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}",
	"{\"custom_id\":\"\xed\xa0\x80\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\xc0\"}}",
	"{\"custom_id\":\"\xe2\x82\",\"method\":\"POST\",\"url\":\"/v1/\xc3\xa9\",\"body\":{\"model\":\"m\"}}",
	// Nulls and values of the wrong kind.
	`{"custom_id":null,"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"h","method":null,"url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"h","method":"POST","url":null,"body":{"model":"m"}}`,
	`{"custom_id":"h","method":"POST","url":"/v1/chat/completions","body":{"model":null,"stream":null,"max_tokens":null}}`,
	`{"custom_id":true,"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":{},"method":["POST"],"url":{"a":1},"body":{"model":"m"}}`,
	`{"custom_id":1.5e3,"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}`,
	`{"custom_id":"i","method":"POST","url":"/v1/chat/completions","body":{"model":["m"]}}`,
	`{"custom_id":"i","method":"POST","url":"/v1/chat/completions","body":{"model":{}}}`,
	`{"custom_id":"i","method":"POST","url":7,"body":{"model":"m"}}`,
	`{"custom_id":"","method":"","url":"","body":{"model":""}}`,
	// Members at other depths are not the ones the checks read.
	`{"meta":{"custom_id":"zz","body":{"model":"q"}},"custom_id":"j","method":"POST","url":"/v1/chat/completions","body":{"x":{"model":"z","stream":true},"model":"m","messages":[{"model":"q","n":50}]}}`,
	`{"custom_id":"k","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"model":"m"}]}}`,
	`{"custom_id":"k","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":{"x":true},"n":[[9]],"max_tokens":{}}}`,
	// Numbers for the caps.
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":1e999}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":-1e999,"n":-0}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":1e-400,"n":1E0}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":100.0,"n":0.5e1}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":99999999999999999999}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","min_tokens":000000000000101}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":0123}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":1.e5}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":-}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_tokens":1e+,"n":2}}`,
	`{"custom_id":"l","method":"POST","url":"/v1/chat/completions","body":{"model":"m","best_of":"2","n":true}}`,
	// Whitespace, inside and around.
	" \t{ \"custom_id\" : \"m\" ,\r\"method\"\t:\"POST\" , \"url\":\"/v1/chat/completions\" ,\"body\" : { \"model\" : \"m\" , \"stream\" : true } } \t",
	"\u00a0\u3000{\"custom_id\":\"n\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\v\u0085",
	"\v{\"custom_id\":\"n\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\r",
	"{\"custom_id\":\"n\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}\v}",
	// Trailing garbage and broken grammar.
	req("o", "m") + "x",
	req("o", "m") + "}",
	req("o", "m") + ",",
	req("o", "m") + " {}",
	req("o", "m") + "\x00",
	`{"custom_id":"o",}`,
	`{"custom_id":"o" "method":"POST"}`,
	`{"custom_id":'o'}`,
	`{custom_id:"o"}`,
	`{"custom_id":"o","body":{"model":"m"]}`,
	`{"custom_id":"o","body":[1,2,]}`,
	`{"custom_id":"o","body":[1 2]}`,
	`{"custom_id":"o","x":tru}`,
	`{"custom_id":"o","x":nul,"y":false}`,
	`{"custom_id":"o","x":True}`,
	"{\"custom_id\":\"a\x01\"}",
	// Control characters, quotes and backslashes inside the words that
	// skipPlain tests eight bytes at a time.
	"{\"custom_id\":\"abcdefghijklmnop\x1fqrstuvwxyz\"}",
	"{\"\x1f\":{\"\":[]}}",
	"{\"custom_id\":\"abcdefghijklmno\x7f\x80\xff\\\"pqrstuvw\\\\xyz\"}",
	`{"custom_id":"\x"}`,
	`{"custom_id":"\u12"}`,
	`{"custom_id":"\u12G4"}`,
	`{"custom_id":"\'"}`,
	`{"custom_id":"o`,
	`{"custom_id":"o\`,
	`{"custom_id":`,
	`{"custom_id"`,
	`{`,
	`{}`,
	`{"":1}`,
	`[{"custom_id":"p"}]`,
	`"{}"`,
	// Stream spellings.
	`{"custom_id":"q","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":"true"}}`,
	`{"custom_id":"q","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":false}}`,
	`{"custom_id":"q","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":1}}`,
}

// deepLine is a request whose body nests depth arrays in all (with the
// line's object and the body, depth+2 containers are open at once).
func deepLine(id string, depth int) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":{"model":"m","x":%s%s}}`,
		id, strings.Repeat("[", depth), strings.Repeat("]", depth))
}

// sameValue reports whether the scanner's record of a member matches the
// value encoding/json decoded: absent alike, equal bytes, or for an array
// or object the same first byte.
func sameValue(got []byte, want json.RawMessage, present bool) bool {
	switch {
	case !present:
		return got == nil
	case want[0] == '{' || want[0] == '[':
		return string(got) == string(want[:1])
	}
	return bytes.Equal(got, want)
}

// checkScanMatches fails t when the scanner and encoding/json disagree on
// line.
func checkScanMatches(t *testing.T, line []byte) {
	t.Helper()
	var ls lineScan
	ok := ls.scan(line)
	obj, wantOK := parseObject(line)
	if ok != wantOK {
		t.Fatalf("scan says valid=%v, encoding/json %v: %q", ok, wantOK, line)
	}
	if !ok {
		return
	}
	for k, name := range [numTop]string{"custom_id", "method", "url", "body"} {
		want, present := obj[name]
		if !sameValue(ls.top[k], want, present) {
			t.Fatalf("%s: scan %q, encoding/json %q (present %v) in %q", name, ls.top[k], want, present, line)
		}
		if k == topBody {
			continue
		}
		got, gotCode := stringValue(ls.top[k])
		wantS, wantCode := stringField(obj, name)
		if string(got) != wantS || gotCode != wantCode {
			t.Fatalf("%s as a string: scan %q/%d, encoding/json %q/%d in %q", name, got, gotCode, wantS, wantCode, line)
		}
	}
	body, bodyOK := parseObject(obj["body"])
	if ls.bodyObject() != bodyOK {
		t.Fatalf("body object: scan %v, encoding/json %v in %q", ls.bodyObject(), bodyOK, line)
	}
	names := append([]string{"model", "stream"}, capFields[:]...)
	for k, name := range names {
		want, present := body[name]
		if !sameValue(ls.body[k], want, present) {
			t.Fatalf("body.%s: scan %q, encoding/json %q (present %v) in %q", name, ls.body[k], want, present, line)
		}
	}
	if bodyOK {
		got, gotCode := stringValue(ls.body[bodyModel])
		wantS, wantCode := stringField(body, "model")
		if string(got) != wantS || gotCode != wantCode {
			t.Fatalf("model as a string: scan %q/%d, encoding/json %q/%d in %q", got, gotCode, wantS, wantCode, line)
		}
	}
}

func TestScanMatchesDecoder(t *testing.T) {
	for _, l := range diffLines {
		checkScanMatches(t, []byte(l))
	}
	for _, d := range []int{1, 100, maxDepth - 2, maxDepth - 1, maxDepth} {
		checkScanMatches(t, []byte(deepLine("deep", d)))
	}
}

func TestScanDepth(t *testing.T) {
	var ls lineScan
	if !ls.scan([]byte(deepLine("a", maxDepth-2))) {
		t.Fatalf("%d containers open at once must be accepted, as encoding/json does", maxDepth)
	}
	if ls.scan([]byte(deepLine("a", maxDepth-1))) {
		t.Fatalf("%d containers open at once must be refused, as encoding/json does", maxDepth+1)
	}
	// Far deeper: refused without growing the stack.
	huge := `{"x":` + strings.Repeat(`{"y":[`, 1<<20)
	if ls.scan([]byte(huge)) {
		t.Fatal("an unterminated, hugely deep line must be refused")
	}
	res, err := Validate(strings.NewReader(huge+"\n"+req("a", "m")+"\n"), ep, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(errsOf(res)); got != fmt.Sprint([]wantErr{{CodeInvalidJSONLine, "", 1}}) {
		t.Fatalf("errors %s", got)
	}
}

func FuzzScanMatchesDecoder(f *testing.F) {
	for _, l := range diffLines {
		f.Add([]byte(l))
	}
	f.Add([]byte(deepLine("d", 30)))
	f.Fuzz(func(t *testing.T, line []byte) {
		checkScanMatches(t, line)
	})
}

// diffOptions derives the options of one differential run from mode, so
// the fuzzer explores them: an empty or given endpoint, caps on or off, and
// a short or long error list.
func diffOptions(chunk, mode uint8) (string, Options) {
	opts := Options{ChunkSize: int(chunk%5) + 1, MaxRequests: 40, MaxErrors: 8, MaxLineBytes: 1 << 16}
	if mode&2 != 0 {
		opts.MaxTokens, opts.MaxN = 100, 2
	}
	if mode&4 != 0 {
		opts.MaxErrors = 2
	}
	if mode&1 != 0 {
		return "", opts
	}
	return ep, opts
}

// checkMatchesReference fails t when Validate and referenceValidate give
// different Results for data.
func checkMatchesReference(t *testing.T, data []byte, chunk, mode uint8) {
	t.Helper()
	endpoint, opts := diffOptions(chunk, mode)
	got, err := Validate(bytes.NewReader(data), endpoint, opts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := referenceValidate(bytes.NewReader(data), endpoint, opts)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := describe(got), describe(want); g != w {
		t.Fatalf("endpoint %q, options %+v, input %q:\nValidate:  %s\nreference: %s", endpoint, opts, data, g, w)
	}
}

// describe renders every field of a Result, errors in full.
func describe(r *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "model=%q endpoint=%q total=%d chunks=%v errors=[", r.Model, r.Endpoint, r.Total, r.Chunks)
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "{%d %s %s %q}", e.Line, e.Code, e.Param, e.Message)
	}
	b.WriteString("]")
	return b.String()
}

// diffFiles are whole files made of diffLines: each line after a valid
// one, so later checks (duplicates, model, endpoint) come into play.
func diffFiles() []string {
	files := []string{
		strings.Join(diffLines, "\n") + "\n",
		strings.Join(diffLines[:20], "\n"),
		deepLine("a", maxDepth-2) + "\n" + deepLine("b", maxDepth-1) + "\n" + req("c", "m"),
		`{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"e"}}` + "\n" + req("b", "m") + "\n",
		"x\n" + `{"custom_id":"a","method":"POST","body":{"model":"m"}}` + "\n" + req("b", "m") + "\n" + req("c", "m"),
	}
	for _, l := range diffLines {
		files = append(files, req("z", "m")+"\n"+l+"\n"+l+"\n")
	}
	return files
}

func TestValidateMatchesReference(t *testing.T) {
	for _, f := range diffFiles() {
		for mode := range uint8(8) {
			checkMatchesReference(t, []byte(f), 3, mode)
		}
	}
}

func FuzzValidateMatchesReference(f *testing.F) {
	for _, file := range diffFiles() {
		f.Add([]byte(file), uint8(2), uint8(0))
		f.Add([]byte(file), uint8(1), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk, mode uint8) {
		checkMatchesReference(t, data, chunk, mode)
	})
}

// capValues are raw values for a capped field, JSON or not: CheckCaps takes
// a map anyone may fill.
var capValues = []string{
	"", " ", "0", "-0", "7", "100", "101", "0123", "00", "-5", "12abc", " 5 ", "5 ", "\t101\n", "1e2", "1e999", "-1e999",
	"1.5", "100.0000000000001", "999999999999999", "9999999999999999", "123456789012345678901234567890",
	"null", " null", "true", `"5"`, "[5]", "{}", "1-", "+1", ".5", "NaN", "Infinity", "0x10", "1_000",
}

// checkCapsMatch fails t when CheckCaps and the reference disagree on a
// body holding raw in each capped field named by which (a bit per field).
func checkCapsMatch(t *testing.T, raw []byte, which uint8, maxTokens, maxN int64) {
	t.Helper()
	body := map[string]json.RawMessage{"model": json.RawMessage(`"m"`)}
	for k, name := range capFields {
		if which&(1<<k) != 0 {
			body[name] = raw
		}
	}
	got, want := CheckCaps(body, maxTokens, maxN), refCheckCaps(body, maxTokens, maxN)
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("raw %q in fields %06b, caps %d/%d: CheckCaps %+v, reference %+v", raw, which, maxTokens, maxN, got, want)
	}
}

func TestCheckCapsMatchesReference(t *testing.T) {
	for _, raw := range capValues {
		for _, which := range []uint8{1, 2, 8, 16, 32, 0x3f} {
			checkCapsMatch(t, []byte(raw), which, 100, 2)
		}
	}
	checkCapsMatch(t, nil, 1, 100, 2) // present but nil
}

func FuzzCheckCapsMatchesReference(f *testing.F) {
	for _, raw := range capValues {
		f.Add([]byte(raw), uint8(0x3f), int64(100), int64(2))
	}
	f.Fuzz(func(t *testing.T, raw []byte, which uint8, maxTokens, maxN int64) {
		checkCapsMatch(t, raw, which, maxTokens, maxN)
	})
}
