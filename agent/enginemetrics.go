package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"
)

// engineMetricsTimeout bounds the fetch of the engine's metrics during a
// scrape of the agent. It is well under Prometheus's scrape_timeout (5 s in
// deploy/prometheus), so a slow engine costs its own series, not the whole
// scrape of the agent (up=0 and every agent series lost).
const engineMetricsTimeout = 2 * time.Second

// engineGatherer relays the engine's own metrics (vLLM's vllm:* names) on
// the agent's /metrics, each series labelled with the agent's id so that a
// fleet's engines can be told apart. A scrape of an engine that does not
// answer, or not within timeout, yields the agent's own metrics alone.
type engineGatherer struct {
	url     func() string
	agentID string
	client  *http.Client
	// timeout bounds one fetch; engineMetricsTimeout unless a test sets it.
	timeout time.Duration
	log     *slog.Logger
}

// handler serves the agent's own metrics (reg) and the engine's: each
// scrape fetches the engine's within the scrape request's context, so a
// scrape Prometheus gave up on stops waiting on the engine too.
func (g *engineGatherer) handler(reg prometheus.Gatherer) http.Handler {
	opts := promhttp.HandlerOpts{
		// An engine whose metrics cannot be read or merged must not take
		// the agent's own figures down with it: serve what gathers, log
		// the rest.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		engine := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return g.gather(r.Context()) })
		promhttp.HandlerFor(prometheus.Gatherers{reg, engine}, opts).ServeHTTP(w, r)
	})
}

// gather fetches and relabels the engine's metrics, giving up when ctx ends
// or after g.timeout.
func (g *engineGatherer) gather(ctx context.Context) ([]*dto.MetricFamily, error) {
	u := g.url()
	if u == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("engine metrics: %w", err)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		// An engine that is down shows in the agent's own health metrics;
		// failing the whole scrape would hide those too.
		g.skipped(ctx, err)
		return nil, nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			// The body came too slowly: a timeout, not bad metrics.
			g.skipped(ctx, err)
			return nil, nil
		}
		return nil, fmt.Errorf("parse engine metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(families))
	for _, mf := range families {
		for _, m := range mf.Metric {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String("agent"), Value: proto.String(g.agentID)})
		}
		out = append(out, mf)
	}
	return out, nil
}

// skipped logs, at debug, a scrape served without the engine's metrics; an
// engine that is down or slow would otherwise log on every scrape.
func (g *engineGatherer) skipped(ctx context.Context, err error) {
	reason := "engine unreachable"
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		reason = fmt.Sprintf("engine metrics took over %s", g.timeout)
	} else if ctx.Err() != nil {
		reason = "scrape cancelled"
	}
	g.log.Debug("served the agent's metrics without the engine's", "reason", reason, "err", err)
}
