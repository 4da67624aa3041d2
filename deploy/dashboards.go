package deploy

import (
	"encoding/json"
	"fmt"
)

// PrometheusUID and LokiUID are the uids of the provisioned datasources
// (grafana/provisioning/datasources/datasources.yml); every panel uses one.
const (
	PrometheusUID = "vbatch-prometheus"
	LokiUID       = "vbatch-loki"
)

// Job selectors: coordinator figures, and agent figures.
const (
	coord = `job="vbatch-coordinator"`
	agent = `job="vbatch-agent"`
)

// target is one query of a panel.
type target struct {
	expr, legend string
	heatmap      bool
}

// panel is one Grafana panel, laid out on a 24-column grid.
type panel struct {
	title, typ, unit, description string
	w, h                          int
	targets                       []target
	stacked                       bool
	min, max                      *float64
	thresholds                    []threshold
	mappings                      []any
}

// threshold is a colour step starting at value (nil: the base step).
type threshold struct {
	value *float64
	color string
}

func f(v float64) *float64 { return &v }

func q(expr, legend string) target { return target{expr: expr, legend: legend} }

// dashboard is one generated dashboard.
type dashboard struct {
	uid, title, description string
	tags                    []string
	panels                  []panel
}

// JSON renders the dashboard as Grafana's dashboard model.
func (d dashboard) JSON() ([]byte, error) {
	var panels []any
	x, y, rowH := 0, 0, 0
	for i, p := range d.panels {
		if x+p.w > 24 {
			x, y, rowH = 0, y+rowH, 0
		}
		panels = append(panels, p.model(i+1, x, y))
		x += p.w
		rowH = max(rowH, p.h)
	}
	m := map[string]any{
		"uid":           d.uid,
		"title":         d.title,
		"description":   d.description,
		"tags":          d.tags,
		"timezone":      "browser",
		"editable":      true,
		"schemaVersion": 39,
		"version":       1,
		"refresh":       "10s",
		"time":          map[string]any{"from": "now-6h", "to": "now"},
		"panels":        panels,
		"templating":    map[string]any{"list": []any{}},
		"annotations":   map[string]any{"list": []any{}},
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("dashboard %s: %w", d.uid, err)
	}
	return append(b, '\n'), nil
}

func (p panel) model(id, x, y int) map[string]any {
	ds := map[string]any{"type": "prometheus", "uid": PrometheusUID}
	var targets []any
	for i, t := range p.targets {
		tm := map[string]any{
			"datasource":   ds,
			"refId":        string(rune('A' + i)),
			"expr":         t.expr,
			"legendFormat": t.legend,
			"range":        true,
		}
		if t.heatmap {
			tm["format"] = "heatmap"
		}
		targets = append(targets, tm)
	}
	defaults := map[string]any{}
	if p.unit != "" {
		defaults["unit"] = p.unit
	}
	if p.min != nil {
		defaults["min"] = *p.min
	}
	if p.max != nil {
		defaults["max"] = *p.max
	}
	if len(p.thresholds) > 0 {
		var steps []any
		for _, t := range p.thresholds {
			var v any
			if t.value != nil {
				v = *t.value
			}
			steps = append(steps, map[string]any{"color": t.color, "value": v})
		}
		defaults["thresholds"] = map[string]any{"mode": "absolute", "steps": steps}
	}
	if len(p.mappings) > 0 {
		defaults["mappings"] = p.mappings
	}
	if p.typ == "timeseries" {
		custom := map[string]any{"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
		if p.stacked {
			custom["stacking"] = map[string]any{"mode": "normal", "group": "A"}
			custom["fillOpacity"] = 40
		}
		defaults["custom"] = custom
	}
	m := map[string]any{
		"id":          id,
		"type":        p.typ,
		"title":       p.title,
		"description": p.description,
		"datasource":  ds,
		"gridPos":     map[string]any{"x": x, "y": y, "w": p.w, "h": p.h},
		"targets":     targets,
		"fieldConfig": map[string]any{"defaults": defaults, "overrides": []any{}},
		"options":     p.options(),
	}
	return m
}

func (p panel) options() map[string]any {
	switch p.typ {
	case "stat":
		return map[string]any{"reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
			"colorMode": "background", "graphMode": "area", "textMode": "auto"}
	case "gauge", "bargauge":
		return map[string]any{"reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
			"showThresholdMarkers": true, "orientation": "auto"}
	case "piechart":
		return map[string]any{"reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
			"pieType": "donut", "legend": map[string]any{"displayMode": "table", "placement": "right", "values": []string{"value", "percent"}}}
	case "heatmap":
		return map[string]any{"calculate": false, "yAxis": map[string]any{"unit": p.unit}, "color": map[string]any{"scheme": "Oranges", "mode": "scheme"}}
	default:
		return map[string]any{"legend": map[string]any{"displayMode": "list", "placement": "bottom"},
			"tooltip": map[string]any{"mode": "multi", "sort": "desc"}}
	}
}

// Dashboards renders every dashboard as Grafana JSON, by file name under
// grafana/dashboards.
func Dashboards() (map[string][]byte, error) {
	out := map[string][]byte{}
	for name, d := range map[string]dashboard{
		"batch-processing.json": batchProcessing(),
		"system-health.json":    systemHealth(),
		"gpu-inference.json":    gpuInference(),
		"cluster.json":          cluster(),
	} {
		b, err := d.JSON()
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}
