package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/vbatch/vbatch/coordinator/validate"
)

// echoInference is a Config.Inference that records the body it was handed.
type echoInference struct {
	mu     sync.Mutex
	bodies []string
}

func (e *echoInference) serve(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if r.ContentLength != int64(len(body)) && r.ContentLength != -1 {
		return fmt.Errorf("content length %d, body %d bytes", r.ContentLength, len(body))
	}
	e.mu.Lock()
	e.bodies = append(e.bodies, string(body))
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"object": "chat.completion"})
	return nil
}

func (e *echoInference) calls() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.bodies...)
}

func TestInferenceCaps(t *testing.T) {
	inf := &echoInference{}
	e := newEnv(t, Config{RootKey: testRoot, Inference: inf.serve, Limits: Limits{MaxTokens: 100, MaxN: 2}})
	k := e.createKey("alpha", "inference")
	post := func(path, body string) response {
		return e.do(http.MethodPost, path, k, strings.NewReader(body), "Content-Type", "application/json")
	}
	ok := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100,"n":2}`
	if r := post("/v1/chat/completions", ok); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if got := inf.calls(); len(got) != 1 || got[0] != ok {
		t.Fatalf("the router got %q, want the body unchanged", got)
	}
	cases := []struct {
		path, body, param string
	}{
		{"/v1/chat/completions", `{"model":"m","max_tokens":101}`, "max_tokens"},
		{"/v1/chat/completions", `{"model":"m","max_completion_tokens":5000}`, "max_completion_tokens"},
		{"/v1/chat/completions", `{"model":"m","max_tokens":"100000"}`, "max_tokens"},
		{"/v1/chat/completions", `{"model":"m","n":3}`, "n"},
		{"/v1/completions", `{"model":"m","prompt":"x","best_of":20}`, "best_of"},
		{"/v1/completions", `{"model":"m","prompt":"x","min_tokens":1e6}`, "min_tokens"},
	}
	for _, tc := range cases {
		er := post(tc.path, tc.body).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
		if er["param"] != tc.param {
			t.Fatalf("%s: param %v, want %s", tc.body, er["param"], tc.param)
		}
	}
	for _, bad := range []string{`not json`, `[1]`, `null`, ``} {
		post("/v1/chat/completions", bad).wantError(t, 400, typeInvalidRequest, codeInvalidJSON)
	}
	if n := len(inf.calls()); n != 1 {
		t.Fatalf("refused requests reached the router: %d calls", n)
	}
	// Embeddings carry none of the fields: they pass.
	if r := post("/v1/embeddings", `{"model":"e","input":"x"}`); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestInferenceBodyCap(t *testing.T) {
	big := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a", MaxInferenceBodyBytes) + `"}]}`
	for _, limits := range []Limits{{}, {MaxTokens: 10}} {
		inf := &echoInference{}
		e := newEnv(t, Config{NoAuth: true, Inference: inf.serve, Limits: limits})
		r := e.do(http.MethodPost, "/v1/chat/completions", "", strings.NewReader(big), "Content-Type", "application/json")
		r.wantError(t, http.StatusRequestEntityTooLarge, typeInvalidRequest, codeRequestTooLarge)
		if n := len(inf.calls()); n != 0 {
			t.Fatalf("limits %+v: an oversize body reached the router", limits)
		}
	}
}

func TestInferenceErrors(t *testing.T) {
	e := newEnv(t, Config{NoAuth: true, Inference: func(http.ResponseWriter, *http.Request) error {
		return fmt.Errorf("model %q: %w", "m", ErrNoAgent)
	}})
	e.do(http.MethodPost, "/v1/chat/completions", "", strings.NewReader(`{"model":"m"}`)).wantError(t, 503, typeServer, "model_unavailable")
	e = newEnv(t, Config{NoAuth: true, Inference: func(http.ResponseWriter, *http.Request) error { return errors.New("model is required") }})
	e.do(http.MethodPost, "/v1/chat/completions", "", strings.NewReader(`{}`)).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	e = newEnv(t, Config{NoAuth: true})
	e.do(http.MethodPost, "/v1/chat/completions", "", bytes.NewReader(nil)).wantError(t, 503, typeServer, codeUnavailable)
}

func TestJSONBodyCap(t *testing.T) {
	e, _ := opsEnv(t)
	pad := strings.Repeat(" ", maxJSONBody)
	for _, path := range []string{"/v1/batches", "/v1/admin/keys", "/v1/admin/cluster/remove-peer", "/v1/admin/cluster/join",
		"/v1/admin/cluster/transfer-leadership"} {
		// Over the cap in the value, and in whitespace after a valid one.
		for _, body := range []string{`{"name":"` + strings.Repeat("n", maxJSONBody) + `"}`, `{"id":"c3"}` + pad} {
			before := e.b.snapshot()
			e.do(http.MethodPost, path, testRoot, strings.NewReader(body), "Content-Type", "application/json").
				wantError(t, http.StatusRequestEntityTooLarge, typeInvalidRequest, codeRequestTooLarge)
			if e.b.snapshot() != before {
				t.Fatalf("%s: refused body changed state", path)
			}
		}
	}
	// One JSON value, then only whitespace.
	e.do(http.MethodPost, "/v1/admin/keys", testRoot, strings.NewReader(`{"scopes":["read"]}}`)).wantError(t, 400, typeInvalidRequest, codeInvalidJSON)
	e.do(http.MethodPost, "/v1/admin/keys", testRoot, strings.NewReader(`{"scopes":["read"]} {}`)).wantError(t, 400, typeInvalidRequest, codeInvalidJSON)
	if r := e.do(http.MethodPost, "/v1/admin/keys", testRoot, strings.NewReader("{\"scopes\":[\"read\"]}\r\n\t ")); r.status != http.StatusCreated {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestUploadLineLength(t *testing.T) {
	e := newEnv(t, Config{RootKey: testRoot, Validate: validate.Options{MaxLineBytes: 200}})
	short := batchLines(1)
	long := `{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"` +
		strings.Repeat("x", 200) + `"}]}}` + "\n"
	for _, tc := range []struct {
		fields []field
		line   string
	}{
		{[]field{{name: "purpose", value: "batch"}, {name: "file", filename: "a", value: short + long + short}}, "Line 2 "},
		{[]field{{name: "file", filename: "a", value: short + "\n" + long}, {name: "purpose", value: "batch"}}, "Line 3 "},
	} {
		before := e.b.snapshot()
		er := e.upload(testRoot, tc.fields...).wantError(t, 400, typeInvalidRequest, codeInvalidFile)
		if msg := er["message"].(string); !strings.HasPrefix(msg, tc.line) || !strings.Contains(msg, "maximum of 200 bytes") {
			t.Fatalf("%v", er)
		}
		if e.b.snapshot() != before {
			t.Fatal("refused upload committed")
		}
	}
	// Other purposes have no lines to bound.
	if r := e.upload(testRoot, field{name: "purpose", value: "user_data"}, field{name: "file", filename: "a", value: long}); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Exactly the cap fits; a '\r' counts, as validate counts it.
	exact := strings.Repeat("y", 200)
	u := &uploadReader{r: strings.NewReader(exact + "\n" + exact + "\r\n" + exact), max: 1 << 20, maxLine: 200}
	if _, err := io.Copy(io.Discard, u); err != nil {
		t.Fatal(err)
	}
	if u.longLine != 2 {
		t.Fatalf("longLine %d, want 2", u.longLine)
	}
	// The coordinator validates batches with the same bound.
	if got := e.api.ValidateOptions(); got.MaxLineBytes != 200 || got.MaxRequests != validate.DefaultMaxRequests {
		t.Fatalf("ValidateOptions %+v", got)
	}
}

func TestValidateOptionsTakeCaps(t *testing.T) {
	a := New(newFakeBackend(), Config{Limits: Limits{MaxTokens: 4096, MaxN: 4}}, nil)
	if o := a.ValidateOptions(); o.MaxTokens != 4096 || o.MaxN != 4 || o.MaxLineBytes != validate.DefaultMaxLineBytes {
		t.Fatalf("%+v", o)
	}
	// Validate's own caps win.
	a = New(newFakeBackend(), Config{Limits: Limits{MaxTokens: 4096}, Validate: validate.Options{MaxTokens: 512}}, nil)
	if o := a.ValidateOptions(); o.MaxTokens != 512 || o.MaxN != 0 {
		t.Fatalf("%+v", o)
	}
}
