package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// post sends body to path on h and returns the recorded response.
func post(t *testing.T, h http.Handler, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

type chatResp struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage usage `json:"usage"`
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %q: %v", rec.Body.String(), err)
	}
	return v
}

const chatBody = `{"model":"sim-model","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"say hello to the world"}],"max_tokens":7}`

func TestChatDeterministic(t *testing.T) {
	h := New(Config{}).Handler()
	a := decode[chatResp](t, post(t, h, "/v1/chat/completions", chatBody))
	b := decode[chatResp](t, post(t, New(Config{}).Handler(), "/v1/chat/completions", chatBody))
	if a.Choices[0].Message.Content != b.Choices[0].Message.Content {
		t.Fatalf("same input, different replies: %q vs %q", a.Choices[0].Message.Content, b.Choices[0].Message.Content)
	}
	if a.ID == b.ID || !strings.HasPrefix(a.ID, "chatcmpl-") {
		t.Fatalf("ids %q %q: want distinct chatcmpl- ids", a.ID, b.ID)
	}
	other := decode[chatResp](t, post(t, h, "/v1/chat/completions", strings.Replace(chatBody, "hello", "goodbye", 1)))
	if other.Choices[0].Message.Content == a.Choices[0].Message.Content {
		t.Fatalf("different input gave the same reply %q", a.Choices[0].Message.Content)
	}
	if got := len(strings.Fields(a.Choices[0].Message.Content)); got != 7 {
		t.Fatalf("reply %q has %d words, want 7", a.Choices[0].Message.Content, got)
	}
	if a.Object != "chat.completion" || a.Choices[0].Message.Role != "assistant" || a.Choices[0].FinishReason != "length" {
		t.Fatalf("unexpected shape: %+v", a)
	}
}

func TestUsageMath(t *testing.T) {
	h := New(Config{Models: []string{"sim-model", "a", "b"}}).Handler()
	cases := []struct {
		name, path, body         string
		prompt, completion, nChs int
	}{
		// 2 + 5 words, 2 messages × 4.
		{"chat", "/v1/chat/completions", chatBody, 7 + 8, 7, 1},
		{"chat default max tokens", "/v1/chat/completions", `{"model":"a","messages":[{"role":"user","content":"hi"}]}`, 1 + 4, 16, 1},
		{"chat n and max_completion_tokens", "/v1/chat/completions", `{"model":"b","n":3,"max_tokens":99,"max_completion_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"one two"},{"type":"text","text":"three"}]}]}`, 3 + 4, 15, 3},
		{"chat null content", "/v1/chat/completions", `{"messages":[{"role":"assistant","content":null},{"role":"user","content":"x"}],"max_tokens":1}`, 1 + 8, 1, 1},
		{"completion", "/v1/completions", `{"model":"a","prompt":"the quick  brown\nfox","max_tokens":4}`, 4, 4, 1},
		{"completion batch", "/v1/completions", `{"model":"a","prompt":["a b","c"],"n":2,"max_tokens":3}`, 3, 12, 4},
		{"completion token ids", "/v1/completions", `{"model":"a","prompt":[1,2,3,4,5],"max_tokens":2}`, 5, 2, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := post(t, h, c.path, c.body)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			r := decode[chatResp](t, rec)
			want := usage{c.prompt, c.completion, c.prompt + c.completion}
			if r.Usage != want {
				t.Fatalf("usage %+v, want %+v", r.Usage, want)
			}
			if len(r.Choices) != c.nChs {
				t.Fatalf("%d choices, want %d", len(r.Choices), c.nChs)
			}
			for i, ch := range r.Choices {
				if ch.Index != i {
					t.Fatalf("choice %d has index %d", i, ch.Index)
				}
			}
		})
	}
}

func TestChoicesDiffer(t *testing.T) {
	r := decode[chatResp](t, post(t, New(Config{}).Handler(), "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"n":2}`))
	if r.Choices[0].Message.Content == r.Choices[1].Message.Content {
		t.Fatalf("n=2 gave identical choices %q", r.Choices[0].Message.Content)
	}
}

// normalize replaces the random and time-dependent fields of a response.
func normalize(b []byte) []byte {
	b = regexp.MustCompile(`"(chatcmpl|cmpl|embd)-[A-Za-z0-9]+"`).ReplaceAll(b, []byte(`"$1-ID"`))
	return regexp.MustCompile(`"created":\d+`).ReplaceAll(b, []byte(`"created":0`))
}

func TestGolden(t *testing.T) {
	h := New(Config{}).Handler()
	cases := []struct{ name, path, body string }{
		{"chat", "/v1/chat/completions", chatBody},
		{"chat_stream", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}`},
		{"completion_stream", "/v1/completions", `{"prompt":"hi","max_tokens":2,"stream":true}`},
		{"unknown_model", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"hi"}]}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := normalize(post(t, h, c.path, c.body).Body.Bytes())
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from golden:\n%s\nwant:\n%s", c.name, got, want)
			}
		})
	}
}

// events splits an SSE body into its data payloads.
func events(t *testing.T, body string) []string {
	t.Helper()
	if !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream does not end with [DONE]: %q", body)
	}
	var out []string
	for _, ev := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		d, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(d, "\n") {
			t.Fatalf("malformed event %q", ev)
		}
		out = append(out, d)
	}
	return out
}

func TestChatStreamMatchesPlain(t *testing.T) {
	h := New(Config{}).Handler()
	plain := decode[chatResp](t, post(t, h, "/v1/chat/completions", chatBody))
	streamBody := strings.Replace(chatBody, `"max_tokens":7`, `"max_tokens":7,"stream":true,"stream_options":{"include_usage":true}`, 1)
	rec := post(t, h, "/v1/chat/completions", streamBody)
	if ct := rec.Header().Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	evs := events(t, rec.Body.String())
	var text strings.Builder
	var finish string
	var u *usage
	for _, d := range evs[:len(evs)-1] {
		var c struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta struct {
					Role    string `json:"role"`
					Content string `json:"content"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *usage `json:"usage"`
		}
		if err := json.Unmarshal([]byte(d), &c); err != nil {
			t.Fatalf("chunk %q: %v", d, err)
		}
		if c.Object != "chat.completion.chunk" {
			t.Fatalf("chunk object %q", c.Object)
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Delta.Content)
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
		if c.Usage != nil {
			if len(c.Choices) != 0 {
				t.Fatalf("usage chunk with choices: %s", d)
			}
			u = c.Usage
		}
	}
	if text.String() != plain.Choices[0].Message.Content {
		t.Fatalf("streamed %q, plain %q", text.String(), plain.Choices[0].Message.Content)
	}
	if finish != "length" || u == nil || *u != plain.Usage {
		t.Fatalf("finish %q usage %+v, want length and %+v", finish, u, plain.Usage)
	}
	// Without include_usage there is no usage chunk.
	rec = post(t, h, "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"stream":true,"max_tokens":2}`)
	if strings.Contains(rec.Body.String(), `"usage"`) {
		t.Fatalf("usage sent without include_usage: %s", rec.Body)
	}
	if n := len(events(t, rec.Body.String())); n != 1+2+1+1 {
		t.Fatalf("%d events, want role + 2 tokens + finish + DONE", n)
	}
}

func TestEmbeddings(t *testing.T) {
	h := New(Config{}).Handler()
	type embResp struct {
		Object string `json:"object"`
		Data   []struct {
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	r := decode[embResp](t, post(t, h, "/v1/embeddings", `{"model":"sim-model","input":["hello world","x","hello world"]}`))
	if r.Object != "list" || len(r.Data) != 3 || r.Usage.PromptTokens != 5 {
		t.Fatalf("unexpected response %+v", r)
	}
	for _, d := range r.Data {
		var norm float64
		for _, x := range d.Embedding {
			norm += x * x
		}
		if len(d.Embedding) != EmbeddingDim || math.Abs(norm-1) > 1e-5 {
			t.Fatalf("embedding %d: dim %d norm² %v", d.Index, len(d.Embedding), norm)
		}
	}
	if fmt.Sprint(r.Data[0].Embedding) != fmt.Sprint(r.Data[2].Embedding) || fmt.Sprint(r.Data[0].Embedding) == fmt.Sprint(r.Data[1].Embedding) {
		t.Fatal("embeddings are not a function of the input")
	}
	b64 := post(t, h, "/v1/embeddings", `{"input":"hello world","encoding_format":"base64"}`)
	if want := encodeFloats(unitVector(digest(DefaultModel, "embedding", "hello world"))); !strings.Contains(b64.Body.String(), want) {
		t.Fatalf("base64 embedding missing from %s", b64.Body)
	}
}

func TestErrorRateDeterministic(t *testing.T) {
	s := New(Config{ErrorRate: 0.3})
	failed := map[int]bool{}
	for round := range 2 {
		for i := range 200 {
			rec := post(t, s.Handler(), "/v1/completions", fmt.Sprintf(`{"prompt":"p%d","max_tokens":1}`, i))
			if rec.Code != http.StatusOK && rec.Code != http.StatusInternalServerError {
				t.Fatalf("status %d", rec.Code)
			}
			bad := rec.Code == http.StatusInternalServerError
			if round == 0 {
				failed[i] = bad
			} else if failed[i] != bad {
				t.Fatalf("request %d: failed=%v first, %v again", i, failed[i], bad)
			}
		}
	}
	n := 0
	for _, f := range failed {
		if f {
			n++
		}
	}
	if n < 35 || n > 85 {
		t.Fatalf("%d of 200 failed at rate 0.3", n)
	}
	if got := s.Served(); got != int64(2*(200-n)) {
		t.Fatalf("Served() = %d, want %d", got, 2*(200-n))
	}
}

func TestMaxNumSeqsBound(t *testing.T) {
	const limit, total = 3, 12
	s := New(Config{MaxNumSeqs: limit, Latency: 20 * time.Millisecond})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	var mu sync.Mutex
	peak := int64(0)
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if r := s.Running(); r > peak {
				mu.Lock()
				peak = r
				mu.Unlock()
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			resp, err := http.Post(srv.URL+"/v1/completions", "application/json", strings.NewReader(fmt.Sprintf(`{"prompt":"%d"}`, i)))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	close(stop)
	<-watched
	if peak > limit || peak == 0 {
		t.Fatalf("peak running %d, want 1..%d", peak, limit)
	}
	if s.Served() != total || s.Running() != 0 || s.Waiting() != 0 {
		t.Fatalf("served %d running %d waiting %d", s.Served(), s.Running(), s.Waiting())
	}
}

func TestQueueingShowsInMetrics(t *testing.T) {
	s := New(Config{MaxNumSeqs: 1, Latency: time.Hour})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/completions", strings.NewReader(`{"prompt":"x"}`))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	waitFor(t, func() bool { return s.Running() == 1 && s.Waiting() == 2 })
	m := scrape(t, s.Handler())
	for _, want := range []string{`vllm:num_requests_running{model_name="sim-model"} 1`, `vllm:num_requests_waiting{model_name="sim-model"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	cancel()
	wg.Wait()
	waitFor(t, func() bool { return s.Running() == 0 && s.Waiting() == 0 })
}

func TestThroughputModel(t *testing.T) {
	s := New(Config{TokensPerSecond: 200, Latency: 10 * time.Millisecond})
	start := time.Now()
	rec := post(t, s.Handler(), "/v1/completions", `{"prompt":"x","max_tokens":20}`)
	// 10ms + 20/200 s = 110ms.
	if d := time.Since(start); rec.Code != http.StatusOK || d < 110*time.Millisecond {
		t.Fatalf("status %d after %v, want 200 after at least 110ms", rec.Code, d)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func TestMetricNames(t *testing.T) {
	s := New(Config{})
	post(t, s.Handler(), "/v1/chat/completions", chatBody)
	m := scrape(t, s.Handler())
	for _, want := range []string{
		`vllm:num_requests_running{model_name="sim-model"} 0`,
		`vllm:num_requests_waiting{model_name="sim-model"} 0`,
		`vllm:prompt_tokens_total{model_name="sim-model"} 15`,
		`vllm:generation_tokens_total{model_name="sim-model"} 7`,
		`vllm:request_success_total{finished_reason="length",model_name="sim-model"} 1`,
		`vllm:e2e_request_latency_seconds_count{model_name="sim-model"} 1`,
		`vllm:time_to_first_token_seconds_count{model_name="sim-model"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestErrors(t *testing.T) {
	h := New(Config{APIKey: "k"}).Handler()
	do := func(method, path, key, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	cases := []struct {
		name, method, path, key, body string
		status                        int
		typ                           string
	}{
		{"no key", "POST", "/v1/chat/completions", "", chatBody, 401, "authentication_error"},
		{"wrong key", "GET", "/v1/models", "x", "", 401, "authentication_error"},
		{"bad json", "POST", "/v1/chat/completions", "k", `{"messages":`, 400, "invalid_request_error"},
		{"unknown model", "POST", "/v1/completions", "k", `{"model":"gpt-9","prompt":"x"}`, 404, "invalid_request_error"},
		{"no messages", "POST", "/v1/chat/completions", "k", `{"model":"sim-model"}`, 400, "invalid_request_error"},
		{"no prompt", "POST", "/v1/completions", "k", `{}`, 400, "invalid_request_error"},
		{"bad max tokens", "POST", "/v1/completions", "k", `{"prompt":"x","max_tokens":0}`, 400, "invalid_request_error"},
		{"too many choices", "POST", "/v1/completions", "k", `{"prompt":"x","n":1000}`, 400, "invalid_request_error"},
		{"stream embeddings", "POST", "/v1/embeddings", "k", `{"input":"x","stream":true}`, 400, "invalid_request_error"},
		{"get chat", "GET", "/v1/chat/completions", "k", "", 405, "invalid_request_error"},
		{"no route", "GET", "/v2/x", "k", "", 404, "invalid_request_error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := do(c.method, c.path, c.key, c.body)
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, c.status, rec.Body)
			}
			var e struct {
				Error struct {
					Message, Type string
				}
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Type != c.typ || e.Error.Message == "" {
				t.Fatalf("error object %s (%v), want type %s", rec.Body, err, c.typ)
			}
		})
	}
	if rec := do("GET", "/health", "", ""); rec.Code != 200 {
		t.Fatalf("/health without key: %d", rec.Code)
	}
	if rec := do("GET", "/v1/models", "k", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"id":"sim-model"`) {
		t.Fatalf("/v1/models: %d %s", rec.Code, rec.Body)
	}
}

func TestCrashAfter(t *testing.T) {
	crashed := make(chan struct{}, 10)
	s := New(Config{CrashAfter: 2, Crash: func() { crashed <- struct{}{} }})
	for i := range 4 {
		post(t, s.Handler(), "/v1/completions", fmt.Sprintf(`{"prompt":"%d"}`, i))
		if want := 0; i == 0 && len(crashed) != want {
			t.Fatal("crashed after one request")
		}
	}
	if len(crashed) != 1 {
		t.Fatalf("Crash called %d times, want once", len(crashed))
	}
}

// TestCrashOn: every request carrying the poison text crashes the
// simulator, and no other does.
func TestCrashOn(t *testing.T) {
	crashed := make(chan struct{}, 10)
	s := New(Config{CrashOn: "POISON", Latency: time.Millisecond, Crash: func() { crashed <- struct{}{} }})
	want := 0
	for i, prompt := range []string{"fine", "a POISON pill", "fine again", "POISON"} {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/v1/completions", strings.NewReader(fmt.Sprintf(`{"prompt":%q}`, prompt))))
		if strings.Contains(prompt, "POISON") {
			want++
		} else if rec.Code != 200 {
			t.Fatalf("request %d (%q): status %d", i, prompt, rec.Code)
		}
		if got := len(crashed); got != want {
			t.Fatalf("after request %d (%q): %d crashes, want %d", i, prompt, got, want)
		}
	}
}

func TestRunServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s := New(Config{})
	ln := listen(t)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, ln) }()
	resp, err := http.Post("http://"+ln.Addr().String()+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			n++
		}
	}
	resp.Body.Close()
	if n != 16+1+1 {
		t.Fatalf("%d events, want 16 tokens + finish + DONE", n)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// FuzzHandlers checks that no body makes an endpoint panic or answer
// anything but JSON or an event stream.
func FuzzHandlers(f *testing.F) {
	for _, s := range []string{chatBody, `{"prompt":[[1,2],[3]],"n":2}`, `{"input":[1,2]}`, `{"messages":[{"content":[{"text":5}]}]}`, `null`, `[]`, `{"max_tokens":-1}`, `{"prompt":"x","stream":true,"stream_options":{"include_usage":true}}`} {
		f.Add(s)
	}
	s := New(Config{})
	f.Fuzz(func(t *testing.T, body string) {
		for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} {
			rec := post(t, s.Handler(), path, body)
			ct := rec.Header().Get("Content-Type")
			if ct != "application/json" && ct != "text/event-stream" {
				t.Fatalf("%s: content type %q status %d", path, ct, rec.Code)
			}
			if _, err := io.ReadAll(rec.Body); err != nil {
				t.Fatal(err)
			}
		}
	})
}
