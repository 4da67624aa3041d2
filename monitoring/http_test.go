package monitoring

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func testAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/files", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"file-abc","object":"file","bytes":1234,"purpose":"batch"}`)
	})
	mux.HandleFunc("/v1/batches/{id}", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":{"message":"no such batch"}}`, http.StatusNotFound)
	})
	mux.HandleFunc("/v1/boom", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	return mux
}

func TestInstrumentHTTP(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewHTTPMetrics(reg)
	// Wrapped the way the coordinator wraps it: an outer mux routes
	// everything to the instrumented API, whose own mux sets the pattern.
	outer := http.NewServeMux()
	outer.Handle("/", InstrumentHTTP(testAPI(), m))
	srv := httptest.NewServer(outer)
	defer srv.Close()

	do := func(method, path, body string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	do("POST", "/v1/files", "some multipart body")
	do("GET", "/v1/batches/batch_1", "")
	do("GET", "/v1/batches/batch_2", "")
	do("GET", "/v1/boom", "")
	do("GET", "/v1/files", "")

	want := `
# HELP vllm_request_total API requests served, by route pattern, method and status code.
# TYPE vllm_request_total counter
vllm_request_total{code="200",endpoint="/v1/files",method="GET"} 1
vllm_request_total{code="200",endpoint="/v1/files",method="POST"} 1
vllm_request_total{code="404",endpoint="/v1/batches/{id}",method="GET"} 2
vllm_request_total{code="503",endpoint="/v1/boom",method="GET"} 1
# HELP vllm_request_errors_total API responses with a 4xx or 5xx status, cut short (code aborted) or left by their client (code 499), by route pattern and code.
# TYPE vllm_request_errors_total counter
vllm_request_errors_total{code="404",endpoint="/v1/batches/{id}"} 2
vllm_request_errors_total{code="503",endpoint="/v1/boom"} 1
# HELP vllm_errors_total Errors by type: OpenAI error types of failed API responses and coordinator error kinds.
# TYPE vllm_errors_total counter
vllm_errors_total{type="not_found_error"} 2
vllm_errors_total{type="unavailable_error"} 1
# HELP vllm_files_uploaded_total Files uploaded successfully through this coordinator.
# TYPE vllm_files_uploaded_total counter
vllm_files_uploaded_total 1
# HELP vllm_files_bytes_uploaded_total Bytes of the files uploaded successfully through this coordinator.
# TYPE vllm_files_bytes_uploaded_total counter
vllm_files_bytes_uploaded_total 1234
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"vllm_request_total", "vllm_request_errors_total", "vllm_errors_total",
		"vllm_files_uploaded_total", "vllm_files_bytes_uploaded_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "vllm_request_duration_seconds"); err != nil || n != 4 {
		t.Fatalf("duration series = %d, %v; want 4 (one per endpoint and method)", n, err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

func TestInstrumentHTTPUnmatchedAndOddMethod(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewHTTPMetrics(reg)
	h := InstrumentHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}), m)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("BREW", "/v1/pot/123", nil))
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("unmatched", "OTHER", "418")); got != 1 {
		t.Fatalf("unmatched request counted %v times, want 1", got)
	}
	if rec.Code != http.StatusTeapot {
		t.Fatalf("status passed through as %d", rec.Code)
	}
}

func TestErrorType(t *testing.T) {
	for status, want := range map[int]string{
		400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
		404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
		429: "rate_limit_error", 500: "server_error", 503: "unavailable_error",
	} {
		if got := ErrorType(status); got != want {
			t.Errorf("ErrorType(%d) = %s, want %s", status, got, want)
		}
	}
}

// TestInstrumentHTTPAbortedStreams: a stream its handler cuts short with
// http.ErrAbortHandler (as httputil.ReverseProxy does when the agent
// behind it dies) is still recorded, as aborted, and one whose client went
// away as 499; the panic still reaches the server, which cuts the
// connection.
func TestInstrumentHTTPAbortedStreams(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewHTTPMetrics(reg)
	started := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/cut", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "data: part\n\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("/v1/left", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "data: part\n\n")
		w.(http.Flusher).Flush()
		started <- struct{}{}
		<-r.Context().Done()
		panic(http.ErrAbortHandler)
	})
	srv := httptest.NewServer(InstrumentHTTP(mux, m))
	defer srv.Close()

	resp, err := srv.Client().Get(srv.URL + "/v1/cut")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the aborted stream read to a clean end")
	}
	resp.Body.Close()

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/left", nil)
	resp, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	resp.Body.Close()

	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.Requests.WithLabelValues("/v1/left", "GET", CodeClientGone)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the request its client left was not recorded as 499")
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := `
# HELP vllm_request_total API requests served, by route pattern, method and status code.
# TYPE vllm_request_total counter
vllm_request_total{code="499",endpoint="/v1/left",method="GET"} 1
vllm_request_total{code="aborted",endpoint="/v1/cut",method="GET"} 1
# HELP vllm_request_errors_total API responses with a 4xx or 5xx status, cut short (code aborted) or left by their client (code 499), by route pattern and code.
# TYPE vllm_request_errors_total counter
vllm_request_errors_total{code="499",endpoint="/v1/left"} 1
vllm_request_errors_total{code="aborted",endpoint="/v1/cut"} 1
# HELP vllm_errors_total Errors by type: OpenAI error types of failed API responses and coordinator error kinds.
# TYPE vllm_errors_total counter
vllm_errors_total{type="aborted"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "vllm_request_total", "vllm_request_errors_total", "vllm_errors_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "vllm_request_duration_seconds"); err != nil || n != 2 {
		t.Fatalf("duration series = %d, %v; want 2", n, err)
	}
}
