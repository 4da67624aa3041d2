package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/vbatch/vbatch/monitoring"
)

var update = flag.Bool("update", false, "rewrite grafana/dashboards from the generator")

const dashboardDir = "grafana/dashboards"

func TestDashboardsUpToDate(t *testing.T) {
	gen, err := Dashboards()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		for name, b := range gen {
			if err := os.WriteFile(filepath.Join(dashboardDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join(dashboardDir, "*.json"))
	if len(files) != len(gen) {
		t.Errorf("%d dashboard files, the generator makes %d", len(files), len(gen))
	}
	for name, b := range gen {
		have, err := os.ReadFile(filepath.Join(dashboardDir, name))
		if err != nil {
			t.Fatalf("%v (run go test ./deploy -update)", err)
		}
		if !bytes.Equal(have, b) {
			t.Errorf("%s differs from the generator's output; run go test ./deploy -update", name)
		}
	}
}

// grafanaDashboard is the part of Grafana's model the checks read.
type grafanaDashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		Title      string     `json:"title"`
		Type       string     `json:"type"`
		Datasource datasource `json:"datasource"`
		Targets    []struct {
			Datasource datasource `json:"datasource"`
			Expr       string     `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// metricRef finds vbatch metric names in PromQL or rule text.
var metricRef = regexp.MustCompile(`\b(?:vllm|vbatch)_[a-z0-9_]+\b`)

// knownMetric reports whether name is defined in package monitoring, as
// a family or as a histogram's _bucket, _sum or _count series.
func knownMetric(name string) bool {
	if slices.Contains(monitoring.MetricNames(), name) {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(monitoring.HistogramNames(), base) {
			return true
		}
	}
	return false
}

func TestDashboardsUseProvisionedDatasourceAndDefinedMetrics(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(dashboardDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s: %v", dashboardDir, err)
	}
	provisioned, err := os.ReadFile("grafana/provisioning/datasources/datasources.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(provisioned), "uid: "+PrometheusUID) {
		t.Fatalf("datasources.yml does not provision uid %s", PrometheusUID)
	}
	uids := map[string]bool{}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var d grafanaDashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if d.UID == "" || uids[d.UID] {
			t.Errorf("%s: uid %q empty or used twice", file, d.UID)
		}
		uids[d.UID] = true
		if len(d.Panels) < 10 {
			t.Errorf("%s: %d panels, want at least 10", file, len(d.Panels))
		}
		for _, p := range d.Panels {
			if p.Datasource.UID != PrometheusUID {
				t.Errorf("%s/%s: datasource %q, want %q", file, p.Title, p.Datasource.UID, PrometheusUID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s/%s: no query", file, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource.UID != PrometheusUID {
					t.Errorf("%s/%s: target datasource %q", file, p.Title, tg.Datasource.UID)
				}
				names := metricRef.FindAllString(tg.Expr, -1)
				// up is Prometheus's own scrape health series.
				if len(names) == 0 && !strings.HasPrefix(tg.Expr, "up{") {
					t.Errorf("%s/%s: query %q reads no vbatch metric", file, p.Title, tg.Expr)
				}
				for _, n := range names {
					if !knownMetric(n) {
						t.Errorf("%s/%s: %s is not defined in package monitoring", file, p.Title, n)
					}
				}
			}
		}
	}
}

// metricExprs returns the PromQL of every target of a dashboard.
func metricExprs(t *testing.T, raw []byte) []string {
	t.Helper()
	var d grafanaDashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

func TestAlertRulesUseDefinedMetrics(t *testing.T) {
	files, _ := filepath.Glob("prometheus/rules/*.yml")
	if len(files) == 0 {
		t.Fatal("no rule files")
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range metricRef.FindAllString(string(raw), -1) {
			if !knownMetric(n) {
				t.Errorf("%s: %s is not defined in package monitoring", file, n)
			}
		}
	}
}

func TestKnownMetricRejectsUndefined(t *testing.T) {
	for _, n := range []string{"vllm_no_such_metric", "vllm_queue_depth_bucket", "vllm_request_total_sum"} {
		if knownMetric(n) {
			t.Errorf("knownMetric(%s) = true", n)
		}
	}
	for _, n := range []string{"vllm_queue_depth", "vllm_request_duration_seconds_bucket"} {
		if !knownMetric(n) {
			t.Errorf("knownMetric(%s) = false", n)
		}
	}
}
