package cli

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestNormalizeBase(t *testing.T) {
	for in, want := range map[string]string{
		"":                              DefaultAddr,
		"10.0.0.1:8000":                 "http://10.0.0.1:8000",
		"http://10.0.0.1:8000/":         "http://10.0.0.1:8000",
		"https://vbatch.example.com/v1": "https://vbatch.example.com",
		"http://h:8000/v1/":             "http://h:8000",
		" http://h:8000 ":               "http://h:8000",
		"http://h:8000/prefix/v1":       "http://h:8000/prefix",
	} {
		if got := NormalizeBase(in); got != want {
			t.Errorf("NormalizeBase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestClientDecodesErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   APIError
		text   string
	}{
		{
			name:   "openai error object",
			status: 404,
			body:   openAIError("No such File object: file-x", "invalid_request_error", "not_found"),
			want:   APIError{Status: 404, Message: "No such File object: file-x", Type: "invalid_request_error", Code: "not_found"},
			text:   "No such File object: file-x (HTTP 404, not_found)",
		},
		{
			name:   "null code",
			status: 500,
			body:   `{"error":{"message":"boom","type":"server_error","param":"file","code":null}}`,
			want:   APIError{Status: 500, Message: "boom", Type: "server_error", Param: "file"},
			text:   "boom (HTTP 500)",
		},
		{
			name:   "plain text from a proxy",
			status: 502,
			body:   "bad gateway\n",
			want:   APIError{Status: 502, Message: "bad gateway"},
			text:   "bad gateway (HTTP 502)",
		},
		{
			name:   "empty body",
			status: 503,
			want:   APIError{Status: 503, Message: "Service Unavailable"},
			text:   "Service Unavailable (HTTP 503)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			c := NewClient(srv.URL, "", 0)
			for name, call := range map[string]func() error{
				"Do": func() error { return c.Do(context.Background(), http.MethodGet, "/v1/x", nil, nil) },
				"Stream": func() error {
					body, err := c.Stream(context.Background(), http.MethodGet, "/v1/x", "", nil)
					if err == nil {
						body.Close()
					}
					return err
				},
			} {
				err := call()
				var apiErr *APIError
				if !errors.As(err, &apiErr) {
					t.Fatalf("%s: err = %v, want *APIError", name, err)
				}
				if *apiErr != tc.want {
					t.Errorf("%s: err = %+v, want %+v", name, *apiErr, tc.want)
				}
				if apiErr.Error() != tc.text {
					t.Errorf("%s: Error() = %q, want %q", name, apiErr.Error(), tc.text)
				}
			}
		})
	}
}

func TestClientSendsHeaders(t *testing.T) {
	var got http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		writeBody(w, 200, `{}`)
	}))
	defer srv.Close()
	c := NewClient(srv.URL+"/v1", "sk-1", 0)
	c.Consistent = true
	if err := c.Do(context.Background(), http.MethodPost, "/v1/batches", map[string]string{"a": "b"}, nil); err != nil {
		t.Fatal(err)
	}
	if got.Get("Authorization") != "Bearer sk-1" || got.Get("X-Vbatch-Consistent") != "true" ||
		got.Get("Content-Type") != "application/json" || !strings.HasPrefix(got.Get("User-Agent"), "vbctl/") {
		t.Errorf("headers = %v", got)
	}
}

func TestClientTimeout(t *testing.T) {
	// The handler answers only when the client gives up, so the test ends
	// as soon as the timeout works and hangs until the suite's deadline if
	// it does not.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer srv.Close()
	c := NewClient(srv.URL, "", 50*time.Millisecond)
	if err := c.Do(context.Background(), http.MethodGet, "/v1/files", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do err = %v, want deadline exceeded", err)
	}
	_, err := c.Stream(context.Background(), http.MethodGet, "/v1/files/f/content", "", nil)
	if err == nil || !strings.Contains(err.Error(), "no answer within the timeout") {
		t.Errorf("Stream err = %v, want header timeout", err)
	}
}

// TestStreamTimeoutBoundsPausesNotTransfers: a download whose bytes keep
// coming takes longer than the timeout and is not cut; one that stops
// sending is cut after the timeout, however long it ran.
func TestStreamTimeoutBoundsPausesNotTransfers(t *testing.T) {
	stall := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		for i := 0; i < 6; i++ {
			_, _ = io.WriteString(w, "x")
			w.(http.Flusher).Flush()
			<-time.After(100 * time.Millisecond) // pacing the body, not a wait for a condition
		}
		if r.URL.Query().Get("stall") != "" {
			select {
			case <-stall:
			case <-r.Context().Done():
			}
		}
	}))
	defer srv.Close()
	defer close(stall)
	// A timeout shorter than the whole body, longer than its pauses (with
	// room for a loaded machine).
	c := NewClient(srv.URL, "", 400*time.Millisecond)
	body, err := c.Stream(context.Background(), http.MethodGet, "/v1/files/f/content", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(body)
	body.Close()
	if err != nil || string(b) != "xxxxxx" {
		t.Errorf("steady body = %q, %v", b, err)
	}
	body, err = c.Stream(context.Background(), http.MethodGet, "/v1/files/f/content?stall=1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	_, err = io.ReadAll(body)
	if err == nil || !strings.Contains(err.Error(), "without progress") {
		t.Errorf("stalled body: %v, want cut for no progress", err)
	}
}

// TestStreamTimeoutSparesSlowUpload: an upload that keeps sending takes
// longer than the timeout and still gets its answer.
func TestStreamTimeoutSparesSlowUpload(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, strings.Repeat("y", int(n)))
	}))
	defer srv.Close()
	c := NewClient(srv.URL, "", 400*time.Millisecond)
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 6; i++ {
			if _, err := pw.Write([]byte("x")); err != nil {
				return
			}
			<-time.After(100 * time.Millisecond)
		}
		pw.Close()
	}()
	body, err := c.Stream(context.Background(), http.MethodPost, "/v1/files", "application/octet-stream", pr)
	if err != nil {
		t.Fatalf("slow upload: %v", err)
	}
	defer body.Close()
	if b, err := io.ReadAll(body); err != nil || len(b) != 6 {
		t.Errorf("answer %q, %v", b, err)
	}
}

func TestTemporary(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&APIError{Status: 503}, true},
		{&APIError{Status: 429}, true},
		{&APIError{Status: 404}, false},
		{&APIError{Status: 401}, false},
		{errors.New("connection refused"), true},
	} {
		if got := temporary(tc.err); got != tc.want {
			t.Errorf("temporary(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
