package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxBodyBytes bounds a request body; larger ones are answered 413.
const maxBodyBytes = 32 << 20

// Server is one simulated vLLM server. Its zero value is not usable; call
// New.
type Server struct {
	cfg     Config
	models  map[string]*modelState
	slots   chan struct{}
	metrics *serverMetrics
	mux     *http.ServeMux

	served    atomic.Int64 // inference requests answered 200
	answered  atomic.Int64 // inference requests answered with any status
	crashOnce sync.Once
}

// modelState holds the live gauges of one model, read at scrape time.
type modelState struct {
	running atomic.Int64
	waiting atomic.Int64
}

// New returns a simulator configured by cfg (defaults filled in). It does
// not listen; use Handler, Serve or Run.
func New(cfg Config) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:    cfg,
		models: make(map[string]*modelState, len(cfg.Models)),
		slots:  make(chan struct{}, cfg.MaxNumSeqs),
		mux:    http.NewServeMux(),
	}
	for _, m := range cfg.Models {
		s.models[m] = &modelState{}
	}
	s.metrics = newServerMetrics(s)
	s.mux.HandleFunc("/v1/chat/completions", s.inference(kindChat))
	s.mux.HandleFunc("/v1/completions", s.inference(kindCompletion))
	s.mux.HandleFunc("/v1/embeddings", s.inference(kindEmbedding))
	s.mux.HandleFunc("/v1/models", s.handleModels)
	s.mux.HandleFunc("/health", s.handleHealth)
	s.mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request_error", nil, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return s
}

// Config returns the configuration the server runs with, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// Handler returns the HTTP handler serving every endpoint.
func (s *Server) Handler() http.Handler { return s.mux }

// Served returns the number of inference requests answered 200.
func (s *Server) Served() int64 { return s.served.Load() }

// Running returns the number of requests holding a sequence slot now.
func (s *Server) Running() int64 {
	var n int64
	for _, m := range s.models {
		n += m.running.Load()
	}
	return n
}

// Waiting returns the number of requests queued for a sequence slot now.
func (s *Server) Waiting() int64 {
	var n int64
	for _, m := range s.models {
		n += m.waiting.Load()
	}
	return n
}

// Serve answers HTTP on ln until ctx ends, then shuts down gracefully
// (requests in flight get up to five seconds to finish).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("sim serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// Run listens on cfg.Addr and serves a new simulator until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	s := New(cfg)
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("sim listen %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// authorized checks the bearer key of a /v1 request and answers 401 when
// it is wrong.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok && got == s.cfg.APIKey {
		return true
	}
	code := "invalid_api_key"
	writeError(w, http.StatusUnauthorized, "authentication_error", &code, "Incorrect API key provided.")
	return false
}

// handleModels lists the served models in OpenAI's shape.
func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", nil, "use GET")
		return
	}
	if !s.authorized(w, r) {
		return
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
		Root    string `json:"root"`
	}
	out := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	now := time.Now().Unix()
	for _, m := range s.cfg.Models {
		out.Data = append(out.Data, model{ID: m, Object: "model", Created: now, OwnedBy: "vllm", Root: m})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleHealth answers 200 with an empty body, as vLLM does.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusOK)
}

// acquire waits for a sequence slot of model m; false when ctx ended first.
func (s *Server) acquire(ctx context.Context, m *modelState) bool {
	m.waiting.Add(1)
	defer m.waiting.Add(-1)
	select {
	case s.slots <- struct{}{}:
		m.running.Add(1)
		return true
	case <-ctx.Done():
		return false
	}
}

// release gives back the slot taken by acquire.
func (s *Server) release(m *modelState) {
	m.running.Add(-1)
	<-s.slots
}

// answered counts an answered inference request and crashes the server
// when CrashAfter says so.
func (s *Server) countAnswer(w http.ResponseWriter, status int) {
	if status == http.StatusOK {
		s.served.Add(1)
	}
	n := s.answered.Add(1)
	if s.cfg.CrashAfter > 0 && n >= s.cfg.CrashAfter {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		s.crashOnce.Do(s.cfg.Crash)
	}
}

// sleep waits for d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
