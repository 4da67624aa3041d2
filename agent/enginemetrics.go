package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"
)

// engineGatherer relays the engine's own metrics (vLLM's vllm:* names) on
// the agent's /metrics, each series labelled with the agent's id so that a
// fleet's engines can be told apart. A scrape of an engine that does not
// answer yields the agent's own metrics alone.
type engineGatherer struct {
	url     func() string
	agentID string
	client  *http.Client
}

// Gather fetches and relabels the engine's metrics.
func (g *engineGatherer) Gather() ([]*dto.MetricFamily, error) {
	u := g.url()
	if u == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("engine metrics: %w", err)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		// An engine that is down shows in the agent's own health metrics;
		// failing the whole scrape would hide those too.
		return nil, nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
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
