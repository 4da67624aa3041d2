// Package engine runs inference for the agent behind one interface. Three
// engines implement it: OpenAI (an existing OpenAI-compatible server, vLLM
// or another), VLLM (a `vllm serve` subprocess the agent starts and
// supervises) and Sim (the built-in simulator, embedded in the agent). All
// three talk HTTP to their server, so the agent exercises the same code
// path in development, tests and production.
package engine

import (
	"context"
	"net/http"
)

// Stats is an engine's state as read from its Prometheus /metrics (vLLM's
// vllm:* names) plus what the engine knows of itself.
type Stats struct {
	// Model is the (first) model served.
	Model string
	// Loaded is true while the engine answers its health check.
	Loaded bool
	// LoadDurationSeconds is how long the engine took to become healthy the
	// last time it was started; zero for an upstream the agent did not start.
	LoadDurationSeconds float64
	// RequestsRunning and RequestsWaiting are vllm:num_requests_running and
	// vllm:num_requests_waiting, summed over models.
	RequestsRunning, RequestsWaiting int64
	// TokensGeneratedTotal is vllm:generation_tokens_total, summed over models.
	TokensGeneratedTotal int64
	// TokensPerSecond is the generation rate between this Stats call and the
	// previous one; zero on the first call or after a counter reset.
	TokensPerSecond float64
}

// Engine is an inference server the agent sends requests to.
type Engine interface {
	// Do POSTs body to path (e.g. "/v1/chat/completions") and returns the
	// status and body of the answer. err is set only when no answer came
	// (connection refused, reset, ctx ended); an HTTP error is an answer.
	Do(ctx context.Context, path string, body []byte) (status int, respBody []byte, err error)
	// Proxy POSTs body to path and copies the answer to w as it arrives, so
	// server-sent events stream through. err is set when the request could
	// not be sent or the copy broke; the caller answers the client itself
	// only if nothing was written to w yet.
	Proxy(ctx context.Context, path string, body []byte, w http.ResponseWriter) error
	// Models are the model names the engine serves.
	Models() []string
	// Stats reads the engine's /metrics; an error when it has none or it
	// cannot be read.
	Stats(ctx context.Context) (Stats, error)
	// MetricsURL is the engine's own Prometheus endpoint; "" when none.
	MetricsURL() string
	// Start brings the engine up and returns once it serves (or failed to).
	Start(ctx context.Context) error
	// Stop takes the engine down; requests in flight fail.
	Stop(ctx context.Context) error
	// Healthy reports whether the engine answered its last health check.
	Healthy() bool
}
