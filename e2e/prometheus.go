package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// PrometheusBin returns the path of the named Prometheus tool (prometheus
// or promtool). VBATCH_PROMETHEUS and VBATCH_PROMTOOL override the lookup
// in PATH. A missing tool fails the test: the monitoring check must never
// pass by skipping.
func PrometheusBin(t testing.TB, name string) string {
	t.Helper()
	env := "VBATCH_" + strings.ToUpper(name)
	want := name
	if p := os.Getenv(env); p != "" {
		want = p
	}
	p, err := exec.LookPath(want)
	if err != nil {
		t.Fatalf("%s not found (%v): install it (Debian: apt-get install prometheus) or set %s=/path/to/%s", name, err, env, name)
	}
	return p
}

// RepoRoot is the repository's root directory, found from this file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// ScrapeTargets are the hosts a test Prometheus scrapes, by shipped job.
type ScrapeTargets struct {
	Coordinators []string // host:port of each coordinator's --http-addr
	Agents       []string // host:port of each agent's --metrics-addr
}

// WritePrometheusConfig writes dir/prometheus.yml: the shipped
// deploy/prometheus/prometheus.yml's coordinator and agent jobs, file-based
// discovery and `service` relabelling, scraping and evaluating every
// second, with the given rule files (absolute paths). The discovery files
// go to dir/targets. It returns the config's path.
func WritePrometheusConfig(t testing.TB, dir string, targets ScrapeTargets, rules []string) string {
	t.Helper()
	tdir := filepath.Join(dir, "targets")
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeTargets := func(name string, hosts []string) {
		var b strings.Builder
		b.WriteString("- targets:\n")
		for _, h := range hosts {
			fmt.Fprintf(&b, "    - %q\n", h)
		}
		b.WriteString("  labels:\n    cluster: e2e\n")
		if err := os.WriteFile(filepath.Join(tdir, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeTargets("coordinators.yml", targets.Coordinators)
	writeTargets("agents.yml", targets.Agents)

	var b strings.Builder
	b.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\nrule_files:\n")
	for _, r := range rules {
		fmt.Fprintf(&b, "  - %q\n", r)
	}
	b.WriteString("\nscrape_configs:\n")
	for _, job := range []struct{ name, files string }{
		{"vbatch-coordinator", "coordinators*.yml"},
		{"vbatch-agent", "agents*.yml"},
	} {
		fmt.Fprintf(&b, "  - job_name: %s\n    file_sd_configs:\n      - files: [%q]\n        refresh_interval: 1s\n",
			job.name, filepath.Join(tdir, job.files))
		fmt.Fprintf(&b, "    relabel_configs:\n      - target_label: service\n        replacement: %s\n", job.name)
	}
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// ShortenAlertFor copies the rule file src to dst with the `for:` of the
// named alert replaced by dur, so a test can see it fire without waiting
// out the production hold time. Every other rule is copied unchanged. It
// fails the test when the alert or its `for:` is not in src.
func ShortenAlertFor(t testing.TB, src, dst, alert, dur string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("read rules %s: %v", src, err)
	}
	lines := strings.Split(string(b), "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "- alert: "+alert {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatalf("rules %s: no alert %s", src, alert)
	}
	forLine := regexp.MustCompile(`^(\s*)for:\s*\S+\s*$`)
	for i := start + 1; i < len(lines) && !strings.Contains(lines[i], "- alert:"); i++ {
		if m := forLine.FindStringSubmatch(lines[i]); m != nil {
			lines[i] = m[1] + "for: " + dur
			if err := os.WriteFile(dst, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("rules %s: alert %s has no for:", src, alert)
}

// Prometheus is a real Prometheus server a test started on loopback.
type Prometheus struct {
	Addr string
	*Proc
}

// StartPrometheus runs prometheus with config, storing its TSDB under dir,
// and waits until it is ready. It is killed when the test ends.
func StartPrometheus(t testing.TB, dir, config string) *Prometheus {
	t.Helper()
	bin := PrometheusBin(t, "prometheus")
	p := &Prometheus{Addr: fmt.Sprintf("127.0.0.1:%d", FreePorts(t, 1)[0])}
	p.Proc = StartProc(t, dir, "prometheus", bin,
		"--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+p.Addr,
		"--log.level=warn")
	WaitFor(t, 30*time.Second, "prometheus ready", func() bool {
		if p.PID() == 0 {
			t.Fatalf("prometheus exited:\n%s", tail(p.Log(), 40))
		}
		resp, err := http.Get("http://" + p.Addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// PromSeries is one series of an instant query's answer.
type PromSeries struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// Query runs an instant PromQL query now and returns its series (a scalar
// answer counts as one series).
func (p *Prometheus) Query(expr string) ([]PromSeries, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.api("/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	switch data.ResultType {
	case "vector":
		var out []PromSeries
		if err := json.Unmarshal(data.Result, &out); err != nil {
			return nil, fmt.Errorf("query %s: %w", expr, err)
		}
		return out, nil
	case "scalar":
		return []PromSeries{{}}, nil
	}
	return nil, fmt.Errorf("query %s: unexpected result type %q", expr, data.ResultType)
}

// PromAlert is one entry of /api/v1/alerts.
type PromAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

// Alerts returns the pending and firing alerts.
func (p *Prometheus) Alerts() ([]PromAlert, error) {
	var data struct {
		Alerts []PromAlert `json:"alerts"`
	}
	if err := p.api("/api/v1/alerts", &data); err != nil {
		return nil, fmt.Errorf("alerts: %w", err)
	}
	return data.Alerts, nil
}

// TargetsUp returns how many active targets of job are up.
func (p *Prometheus) TargetsUp(job string) (int, error) {
	var data struct {
		ActiveTargets []struct {
			Labels map[string]string `json:"labels"`
			Health string            `json:"health"`
		} `json:"activeTargets"`
	}
	if err := p.api("/api/v1/targets?state=active", &data); err != nil {
		return 0, fmt.Errorf("targets: %w", err)
	}
	n := 0
	for _, tg := range data.ActiveTargets {
		if tg.Labels["job"] == job && tg.Health == "up" {
			n++
		}
	}
	return n, nil
}

func (p *Prometheus) api(path string, data any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("status %d: %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}
