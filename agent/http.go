package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/vbatch/vbatch/internal/httpsafe"
	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/monitoring"
)

// maxProxyBody caps an online request body.
const maxProxyBody = 64 << 20

// onlinePaths are the OpenAI endpoints coordinators route online requests
// to; they go straight to the engine, outside the batch concurrency bound,
// so interactive traffic does not queue behind batch lines.
var onlinePaths = []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}

// Handler is the agent's HTTP surface: /metrics, /metrics/engine, /health
// and the online-inference endpoints.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	engine := &engineGatherer{url: a.eng.MetricsURL, agentID: a.id, client: &http.Client{}, timeout: engineMetricsTimeout, log: a.log}
	mux.Handle("GET /metrics", engine.handler(a.metrics.registry))
	mux.HandleFunc("GET /metrics/engine", a.handleEngineMetrics)
	mux.HandleFunc("GET /health", a.handleHealth)
	for _, p := range onlinePaths {
		mux.HandleFunc("POST "+p, a.onlyLoopback(a.onlyCoordinators(a.handleOnline)))
	}
	return mux
}

// serveHTTP serves Handler on ln until shut down.
func (a *Agent) serveHTTP(ln net.Listener) *http.Server {
	srv := httpsafe.NewServer(monitoring.SentryHTTP(a.Handler()), httpsafe.DefaultTimeouts)
	if a.tls != nil {
		// Prometheus scrapes without a client certificate; a certificate,
		// if shown, must be a coordinator's.
		srv.TLSConfig = a.tls.ServerConfig(false, tlsutil.RoleServer)
	}
	go func() {
		if err := httpsafe.Serve(srv, ln); err != nil {
			a.log.Error("http server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return srv
}

// handleHealth answers 200 while the engine is healthy, else 503.
func (a *Agent) handleHealth(w http.ResponseWriter, r *http.Request) {
	status, code := "ok", http.StatusOK
	if !a.eng.Healthy() {
		status, code = "engine unhealthy", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": status, "agent": a.id, "leases": a.held.Load()})
}

// handleEngineMetrics relays the engine's own /metrics unchanged.
func (a *Agent) handleEngineMetrics(w http.ResponseWriter, r *http.Request) {
	u := a.eng.MetricsURL()
	if u == "" {
		http.Error(w, "engine has no metrics endpoint", http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		http.Error(w, fmt.Sprintf("engine metrics url: %v", err), http.StatusInternalServerError)
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, fmt.Sprintf("engine metrics: %v", err), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// onlyLoopback refuses, when OnlineFromLoopbackOnly is set, online
// requests from a remote address that is not loopback: the listener is
// off loopback to be scraped, not to serve the engine to the network.
func (a *Agent) onlyLoopback(next http.HandlerFunc) http.HandlerFunc {
	if !a.cfg.OnlineFromLoopbackOnly {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r.RemoteAddr) {
			writeOpenAIErrorCode(w, http.StatusForbidden, "invalid_request_error", "forbidden",
				"this agent serves online inference to its coordinators on this host only; send the request to a coordinator")
			return
		}
		next(w, r)
	}
}

// fromLoopback reports whether remote (a request's RemoteAddr) is a
// loopback address.
func fromLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// handleOnline passes an online request to the engine. Its answer to a
// failure says whether the request may have reached the engine, because
// the coordinator tries another agent only with one that surely did not
// (a poison request must not crash every engine, nor a long generation
// run three times):
//   - 503 marked NotSentHeader: nothing was sent (the engine is down, its
//     connection could not be made, or an isolated batch line has it);
//   - 504 (code "timeout"): the agent's request timeout ran out;
//   - 502: the request went and the engine failed under it.
//
// A stream the engine breaks off after the answer started is aborted, so
// the client sees a cut connection rather than a response that looks
// complete.
func (a *Agent) handleOnline(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxProxyBody))
	if err != nil {
		status := http.StatusBadRequest
		if errors.As(err, new(*http.MaxBytesError)) {
			status = http.StatusRequestEntityTooLarge
		}
		writeOpenAIError(w, status, "invalid_request_error", fmt.Sprintf("read request body: %v", err))
		return
	}
	if !a.eng.Healthy() {
		writeNotSent(w, "the engine on this agent is not serving (starting or restarting)")
		return
	}
	// Online requests share the engine like batch requests do, so a batch
	// line isolated to find a request that crashes the engine runs alone.
	// While one runs, or waits for the engine, the request is not held
	// here (for as long as the isolated line and the requests before it
	// take) but answered at once, for the coordinator to try another agent.
	if !a.runner.exclusive.tryShared() {
		writeNotSent(w, "a batch request isolated to find one that crashes the engine has the engine to itself")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.RequestTimeout)
	defer cancel()
	tw := &trackingWriter{ResponseWriter: w}
	err = a.eng.Proxy(ctx, r.URL.Path, body, tw)
	a.runner.exclusive.unlockShared()
	if err == nil {
		return
	}
	if r.Context().Err() != nil {
		a.log.Debug("online request ended by the client", "path", r.URL.Path, "err", err)
		return
	}
	a.log.Warn("online request", "path", r.URL.Path, "err", err)
	switch {
	case tw.wrote:
		panic(http.ErrAbortHandler)
	case notSent(err):
		writeNotSent(w, "the engine on this agent could not be reached")
	case ctx.Err() != nil:
		writeOpenAIErrorCode(w, http.StatusGatewayTimeout, "server_error", "timeout",
			fmt.Sprintf("the engine did not answer within the request timeout (%s)", a.cfg.RequestTimeout))
	default:
		writeOpenAIError(w, http.StatusBadGateway, "server_error", "the engine failed under the request")
	}
}

// writeNotSent answers 503 for an online request the engine never got,
// marked so that the coordinator may try another agent.
func writeNotSent(w http.ResponseWriter, msg string) {
	w.Header().Set(NotSentHeader, "1")
	writeOpenAIError(w, http.StatusServiceUnavailable, "server_error", msg)
}

// writeOpenAIError writes an OpenAI error object without a code.
func writeOpenAIError(w http.ResponseWriter, status int, typ, msg string) {
	writeOpenAIErrorCode(w, status, typ, "", msg)
}

// writeOpenAIErrorCode writes an OpenAI error object; code "" is null.
func writeOpenAIErrorCode(w http.ResponseWriter, status int, typ, code, msg string) {
	var c any
	if code != "" {
		c = code
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": c}})
}

// trackingWriter remembers whether a response was started, so a proxy
// failure is answered only when nothing was sent yet. It passes Flush on
// for streamed responses.
type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackingWriter) WriteHeader(code int) {
	t.wrote = true
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackingWriter) Write(b []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(b)
}

// Flush passes a flush on to the underlying writer.
func (t *trackingWriter) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (t *trackingWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// NotSentHeader marks an agent's answer to an online request that never
// reached the engine (value "1"): the coordinator may send such a request
// to another agent, and only such a one. Every other failure may have run
// on the engine, so the request is not sent again.
const NotSentHeader = "X-Vbatch-Not-Sent"
