package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// testKey is the API key every test command line carries.
const testKey = "sk-test-key"

// recorded is one request the fake coordinator received.
type recorded struct {
	// Path is as sent, escaped.
	Method, Path, Query string
	Auth, ContentType   string
	ContentLength       int64
	// Body is the request body, except for multipart uploads, which the
	// handler reads as a stream.
	Body []byte
}

// fakeServer is a coordinator stand-in: it records every request and
// answers with the handlers the test registered.
type fakeServer struct {
	t   *testing.T
	mux *http.ServeMux
	srv *httptest.Server

	mu   sync.Mutex
	reqs []recorded
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	f := &fakeServer{t: t, mux: http.NewServeMux()}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	rec := recorded{
		Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery,
		Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"),
		ContentLength: r.ContentLength,
	}
	if !strings.HasPrefix(rec.ContentType, "multipart/") {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			f.t.Errorf("read request body: %v", err)
		}
		rec.Body = body
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, rec)
	f.mu.Unlock()
	f.mux.ServeHTTP(w, r)
}

// handle registers h for a ServeMux pattern such as "GET /v1/files/{id}".
func (f *fakeServer) handle(pattern string, h http.HandlerFunc) { f.mux.HandleFunc(pattern, h) }

// reply registers a canned JSON answer for pattern.
func (f *fakeServer) reply(pattern string, status int, body string) {
	f.handle(pattern, func(w http.ResponseWriter, _ *http.Request) { writeBody(w, status, body) })
}

// requests returns the requests received so far.
func (f *fakeServer) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

// only returns the one request received, failing the test otherwise.
func (f *fakeServer) only() recorded {
	f.t.Helper()
	reqs := f.requests()
	if len(reqs) != 1 {
		f.t.Fatalf("got %d requests, want 1: %+v", len(reqs), reqs)
	}
	return reqs[0]
}

func writeBody(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// openAIError is an OpenAI error object body.
func openAIError(message, typ, code string) string {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": message, "type": typ, "param": nil, "code": code}})
	return string(b)
}

// result is what one vbctl run printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// run runs vbctl against f with args, the test key and a fixed clock.
func (f *fakeServer) run(args ...string) result {
	f.t.Helper()
	return f.runCtx(context.Background(), args...)
}

func (f *fakeServer) runCtx(ctx context.Context, args ...string) result {
	f.t.Helper()
	full := append([]string{"--addr", f.srv.URL, "--api-key", testKey}, args...)
	return runEnv(f.t, ctx, full...)
}

// testNow is the clock vbctl runs with in tests.
var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// runEnv runs vbctl with exactly args (no --addr) and a fixed clock.
func runEnv(t *testing.T, ctx context.Context, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := &env{stdout: &stdout, stderr: &stderr, now: func() time.Time { return testNow }}
	code := e.run(ctx, args)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// ok fails the test unless the run exited 0.
func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s\nstdout:\n%s", r.code, r.stderr, r.stdout)
	}
	return r
}

// checkRequest compares a recorded request's method, path and query, and
// that it carried the test key.
func checkRequest(t *testing.T, got recorded, method, path, query string) {
	t.Helper()
	if got.Method != method || got.Path != path || got.Query != query {
		t.Errorf("request = %s %s?%s, want %s %s?%s", got.Method, got.Path, got.Query, method, path, query)
	}
	if got.Auth != "Bearer "+testKey {
		t.Errorf("Authorization = %q, want Bearer %s", got.Auth, testKey)
	}
}

// checkJSONBody compares a request body with want, both as JSON values.
func checkJSONBody(t *testing.T, got recorded, want string) {
	t.Helper()
	if ct := got.ContentType; ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var g, w any
	if err := json.Unmarshal(got.Body, &g); err != nil {
		t.Fatalf("request body %q: %v", got.Body, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want %q: %v", want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if !bytes.Equal(gb, wb) {
		t.Errorf("request body = %s, want %s", gb, wb)
	}
}

// checkSameJSON fails unless printed is the pretty-printed form of want,
// with the server's field order kept.
func checkSameJSON(t *testing.T, printed, want string) {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, []byte(want), "", "  "); err != nil {
		t.Fatalf("indent want: %v", err)
	}
	if printed != buf.String()+"\n" {
		t.Errorf("printed:\n%s\nwant:\n%s", printed, buf.String())
	}
}

// checkLines fails unless out, its lines' trailing spaces trimmed, is want.
func checkLines(t *testing.T, out, want string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	if got := strings.Join(lines, "\n"); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}
