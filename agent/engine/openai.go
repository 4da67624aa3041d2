package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// OpenAI is an engine backed by an OpenAI-compatible server the agent did
// not start: vLLM run by someone else, or any other such server.
type OpenAI struct {
	up     *upstream
	models []string

	healthPoll time.Duration
	healthy    atomic.Bool

	// probe runs the health probes after failed requests, one at a time.
	probe probeGate

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

var _ Engine = (*OpenAI)(nil)

// NewOpenAI returns an engine for the server at baseURL (its root, e.g.
// "http://gpu1:8000"; a trailing "/v1" is accepted). apiKey, when set, is
// sent as a bearer token. models are the models it serves; when empty,
// Start asks the server's /v1/models. A nil client gets a default one
// without a global timeout: callers bound each request with its context.
func NewOpenAI(baseURL, apiKey string, models []string, client *http.Client) *OpenAI {
	up := newUpstream(client)
	up.set(baseURL, apiKey)
	return &OpenAI{up: up, models: slices.Clone(models), healthPoll: 5 * time.Second}
}

// Start checks the server once, learns its models if none were given, and
// keeps checking its health in the background until Stop. A server that is
// down is not an error (it is reported by Healthy) unless its models were
// needed.
func (e *OpenAI) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cancel != nil {
		return errors.New("openai engine: already started")
	}
	e.healthy.Store(e.up.probe(ctx))
	if len(e.models) == 0 {
		models, err := e.fetchModels(ctx)
		if err != nil {
			return fmt.Errorf("openai engine: %w", err)
		}
		e.models = models
	}
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel, e.done = cancel, make(chan struct{})
	go e.watchHealth(life, e.done)
	return nil
}

// fetchModels reads the ids of /v1/models.
func (e *OpenAI) fetchModels(ctx context.Context) ([]string, error) {
	status, b, err := e.up.get(ctx, "/v1/models", 16<<20)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("list models: status %d: %.200s", status, b)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	var out []string
	for _, m := range list.Data {
		out = append(out, m.ID)
	}
	if len(out) == 0 {
		return nil, errors.New("list models: the server serves none")
	}
	return out, nil
}

func (e *OpenAI) watchHealth(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(e.healthPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.healthy.Store(e.up.probe(ctx))
		}
	}
}

// Stop ends the background health checks.
func (e *OpenAI) Stop(ctx context.Context) error {
	e.mu.Lock()
	cancel, done := e.cancel, e.done
	e.cancel = nil
	e.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("openai engine: stop: %w", ctx.Err())
	}
}

// Do implements Engine. A connection failure re-checks health at once, so
// the agent can tell an engine that is down from one bad request.
func (e *OpenAI) Do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	status, b, err := e.up.do(ctx, path, body)
	if err != nil && ctx.Err() == nil {
		e.probeAfterError(ctx)
	}
	return status, b, err
}

// probeAfterError checks the server's health after a request failed, one
// probe at a time (probeGate).
func (e *OpenAI) probeAfterError(ctx context.Context) {
	e.probe.run(ctx, func() { e.healthy.Store(e.up.probe(context.WithoutCancel(ctx))) })
}

// Proxy implements Engine.
func (e *OpenAI) Proxy(ctx context.Context, path string, body []byte, w http.ResponseWriter) error {
	return e.up.proxy(ctx, path, body, w)
}

// Models implements Engine.
func (e *OpenAI) Models() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.models)
}

// Stats implements Engine from the server's /metrics.
func (e *OpenAI) Stats(ctx context.Context) (Stats, error) {
	st, err := e.up.stats(ctx)
	if err != nil {
		return Stats{}, err
	}
	if m := e.Models(); len(m) > 0 {
		st.Model = m[0]
	}
	st.Loaded = e.Healthy()
	return st, nil
}

// MetricsURL implements Engine.
func (e *OpenAI) MetricsURL() string { return e.up.metricsURL() }

// Healthy implements Engine.
func (e *OpenAI) Healthy() bool { return e.healthy.Load() }
