package monitoring

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HTTPMetrics are the API's request figures, recorded by InstrumentHTTP.
type HTTPMetrics struct {
	// Requests counts responses by route pattern, method and status code.
	Requests *prometheus.CounterVec
	// Duration is the time to serve a request, by route pattern and method.
	Duration *prometheus.HistogramVec
	// RequestErrors counts responses with a 4xx or 5xx status.
	RequestErrors *prometheus.CounterVec
	// FilesUploaded counts successful file uploads.
	FilesUploaded prometheus.Counter
	// FilesBytesUploaded sums the sizes of successfully uploaded files.
	FilesBytesUploaded prometheus.Counter
	// Errors counts errors by type: the OpenAI error type of failed API
	// responses, and the coordinator's own error kinds.
	Errors *prometheus.CounterVec
}

// UploadPattern is the route pattern of the file upload endpoint (POST).
const UploadPattern = "/v1/files"

// NewHTTPMetrics registers the HTTP metrics on reg.
func NewHTTPMetrics(reg prometheus.Registerer) *HTTPMetrics {
	m := &HTTPMetrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_request_total",
			Help: "API requests served, by route pattern, method and status code.",
		}, []string{LabelEndpoint, LabelMethod, LabelCode}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vllm_request_duration_seconds",
			Help:    "Time to serve an API request, by route pattern and method.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{LabelEndpoint, LabelMethod}),
		RequestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_request_errors_total",
			Help: "API responses with a 4xx or 5xx status, cut short (code aborted) or left by their client (code 499), by route pattern and code.",
		}, []string{LabelEndpoint, LabelCode}),
		FilesUploaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vllm_files_uploaded_total",
			Help: "Files uploaded successfully through this coordinator.",
		}),
		FilesBytesUploaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vllm_files_bytes_uploaded_total",
			Help: "Bytes of the files uploaded successfully through this coordinator.",
		}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm_errors_total",
			Help: "Errors by type: OpenAI error types of failed API responses and coordinator error kinds.",
		}, []string{LabelType}),
	}
	reg.MustRegister(m.Requests, m.Duration, m.RequestErrors, m.FilesUploaded, m.FilesBytesUploaded, m.Errors)
	return m
}

type routeKey struct{}

// routeSlot carries the matched route pattern out of handlers that work on
// copies of the request (every r.WithContext makes one).
type routeSlot struct{ pattern string }

// SetRoute records the route pattern that matched the request, for the
// InstrumentHTTP around it. Handlers behind middleware that copies the
// request call it once the mux has matched.
func SetRoute(ctx context.Context, pattern string) {
	if s, ok := ctx.Value(routeKey{}).(*routeSlot); ok && pattern != "" {
		s.pattern = pattern
	}
}

// Codes InstrumentHTTP records for requests that got no complete answer.
const (
	// CodeClientGone labels a request whose client went away before it was
	// answered in full (nginx's 499): nothing was written, or the handler
	// aborted the answer once the client was gone.
	CodeClientGone = "499"
	// CodeAborted labels a request whose handler aborted the answer
	// (http.ErrAbortHandler or another panic) while the client still
	// waited: a stream cut because the agent or engine behind it failed.
	CodeAborted = "aborted"
)

// InstrumentHTTP records every request next serves. The endpoint label is
// the route pattern that matched (http.Request.Pattern, set by the
// ServeMux inside next on the same request), never the raw path, so ids in
// URLs cannot blow up the series count; a request no pattern matched is
// labelled "unmatched". A request is recorded even when next panics (as
// httputil.ReverseProxy does with http.ErrAbortHandler to cut a stream
// short); the panic goes on up. Its code is then CodeAborted, or
// CodeClientGone when the client had gone, as it is for a request answered
// with nothing once the client was gone.
func InstrumentHTTP(next http.Handler, m *HTTPMetrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		// Only an upload's answer is read back, for the file's size.
		upload := r.Method == http.MethodPost && r.URL.Path == UploadPattern
		rec := &recorder{ResponseWriter: w, capture: upload}
		slot := &routeSlot{}
		r = r.WithContext(context.WithValue(r.Context(), routeKey{}, slot))
		defer func() {
			p := recover()
			m.record(r, slot, rec, upload, p != nil, time.Since(start))
			if p != nil {
				panic(p)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// record counts one request; aborted when its handler panicked.
func (m *HTTPMetrics) record(r *http.Request, slot *routeSlot, rec *recorder, upload, aborted bool, took time.Duration) {
	status := rec.status
	clientGone := r.Context().Err() != nil
	code := strconv.Itoa(status)
	switch {
	case (aborted || status == 0) && clientGone:
		code = CodeClientGone
	case aborted:
		code = CodeAborted
	case status == 0:
		status, code = http.StatusOK, "200"
	}
	endpoint := slot.pattern
	if endpoint == "" {
		endpoint = r.Pattern
	}
	if endpoint == "" {
		endpoint = "unmatched"
	}
	method := methodLabel(r.Method)
	m.Requests.WithLabelValues(endpoint, method, code).Inc()
	m.Duration.WithLabelValues(endpoint, method).Observe(took.Seconds())
	switch {
	case code == CodeClientGone:
		// The client's choice, not a failed answer: no error type.
		m.RequestErrors.WithLabelValues(endpoint, code).Inc()
	case code == CodeAborted:
		m.RequestErrors.WithLabelValues(endpoint, code).Inc()
		m.Errors.WithLabelValues(CodeAborted).Inc()
	case status >= 400:
		m.RequestErrors.WithLabelValues(endpoint, code).Inc()
		m.Errors.WithLabelValues(ErrorType(status)).Inc()
	}
	if upload && endpoint == UploadPattern && code != CodeAborted && code != CodeClientGone && status < 300 {
		m.FilesUploaded.Inc()
		if n, ok := uploadedBytes(rec.body.Bytes()); ok {
			m.FilesBytesUploaded.Add(float64(n))
		}
	}
}

// ErrorType maps an HTTP status to the OpenAI error type the API answers
// it with, the type label of vllm_errors_total.
func ErrorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusConflict:
		return "conflict_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 400 && status < 500:
		return "invalid_request_error"
	case status == http.StatusBadGateway, status == http.StatusServiceUnavailable, status == http.StatusGatewayTimeout:
		return "unavailable_error"
	default:
		return "server_error"
	}
}

// methodLabel bounds the method label to the standard methods.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}

// maxCapture bounds how much of a POST response InstrumentHTTP keeps to
// read an uploaded file's size: a File object is a few hundred bytes.
const maxCapture = 8 << 10

// uploadedBytes reads the bytes field of an OpenAI File object.
func uploadedBytes(body []byte) (int64, bool) {
	var f struct {
		Bytes *int64 `json:"bytes"`
	}
	if err := json.Unmarshal(body, &f); err != nil || f.Bytes == nil {
		return 0, false
	}
	return *f.Bytes, true
}

// recorder notes the status written and, when capture is set, the start
// of the body.
type recorder struct {
	http.ResponseWriter
	status  int
	capture bool
	body    bytes.Buffer
}

// WriteHeader records the status.
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records an implicit 200 and captures the body's start.
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.capture && r.body.Len() < maxCapture {
		r.body.Write(b[:min(len(b), maxCapture-r.body.Len())])
	}
	return r.ResponseWriter.Write(b)
}

// ReadFrom keeps io.Copy's fast path while recording.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.capture {
		return io.Copy(struct{ io.Writer }{r}, src)
	}
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(r.ResponseWriter, src)
}

// Flush forwards to the underlying writer when it can flush.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		if r.status == 0 {
			r.status = http.StatusOK
		}
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
