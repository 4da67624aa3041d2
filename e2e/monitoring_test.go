package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/vbatch/vbatch/deploy"
)

// agentDownAlert is the shipped rule that fires when an agent leaves gossip.
const agentDownAlert = "VbatchAgentDown"

// grafanaBuiltins are the values the test gives Grafana's built-in
// variables. Dashboard template variables are replaced by `.*`.
var grafanaBuiltins = map[string]string{
	"__rate_interval": "30s",
	"__interval":      "15s",
	"__range":         "5m",
}

// dashboardQuery is one panel target of a shipped dashboard.
type dashboardQuery struct {
	Where, Expr string
}

// dashboardQueries returns every PromQL expression of the four dashboards
// with Grafana variables substituted.
func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	boards, err := deploy.Dashboards()
	if err != nil {
		t.Fatalf("dashboards: %v", err)
	}
	names := make([]string, 0, len(boards))
	for n := range boards {
		names = append(names, n)
	}
	sort.Strings(names)
	varRe := regexp.MustCompile(`\$\{?(\w+)(?::\w+)?\}?`)
	var out []dashboardQuery
	for _, name := range names {
		var d struct {
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
			Templating struct {
				List []struct {
					Name string `json:"name"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal(boards[name], &d); err != nil {
			t.Fatalf("dashboard %s: %v", name, err)
		}
		vars := map[string]string{}
		for k, v := range grafanaBuiltins {
			vars[k] = v
		}
		for _, v := range d.Templating.List {
			vars[v.Name] = ".*"
		}
		for _, p := range d.Panels {
			for i, tg := range p.Targets {
				if tg.Expr == "" {
					continue
				}
				where := fmt.Sprintf("%s / %s #%d", name, p.Title, i+1)
				expr := varRe.ReplaceAllStringFunc(tg.Expr, func(m string) string {
					v, ok := vars[varRe.FindStringSubmatch(m)[1]]
					if !ok {
						t.Fatalf("%s: no test value for variable %s in %s", where, m, tg.Expr)
					}
					return v
				})
				out = append(out, dashboardQuery{Where: where, Expr: expr})
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("the dashboards have no queries")
	}
	return out
}

// TestMonitoringLive runs a real Prometheus with the shipped rules against
// a three-coordinator cluster with two agents, runs a batch, checks that
// every dashboard query returns data, then kills an agent and waits for
// the agent-down alert to fire.
func TestMonitoringLive(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	promtool := PrometheusBin(t, "promtool")
	PrometheusBin(t, "prometheus")
	queries := dashboardQueries(t)

	c := StartCluster(t, 3, ClusterOptions{Extra: []string{"--chunk-size", "500", "--lease-ttl", "3s"}})
	var agents []*Agent
	for i := 1; i <= 2; i++ {
		agents = append(agents, c.StartAgent(t, fmt.Sprintf("agent%d", i),
			"--engine", "sim", "--sim-latency", "5ms", "--concurrency", "16", "--part-lines", "100"))
	}
	c.WaitAgents(t, 2)

	// Prometheus loads every shipped rule file; the one with the agent-down
	// alert through a copy that holds it for 2s instead of minutes.
	dir := t.TempDir()
	shipped, err := filepath.Glob(filepath.Join(RepoRoot(), "deploy/prometheus/rules/*.yml"))
	if err != nil || len(shipped) == 0 {
		t.Fatalf("no shipped rule files (%v)", err)
	}
	var rules []string
	shortened := false
	for _, f := range shipped {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "- alert: "+agentDownAlert+"\n") {
			cp := filepath.Join(dir, "short-for-"+filepath.Base(f))
			ShortenAlertFor(t, f, cp, agentDownAlert, "2s")
			f, shortened = cp, true
		}
		rules = append(rules, f)
	}
	if !shortened {
		t.Fatalf("no shipped rule file defines %s", agentDownAlert)
	}
	var targets ScrapeTargets
	for _, co := range c.Coords {
		targets.Coordinators = append(targets.Coordinators, co.HTTP)
	}
	for _, a := range agents {
		targets.Agents = append(targets.Agents, a.HTTP)
	}
	config := WritePrometheusConfig(t, dir, targets, rules)
	if out, err := exec.Command(promtool, "check", "config", config).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	prom := StartPrometheus(t, dir, config)
	WaitFor(t, 30*time.Second, "prometheus scraping every coordinator and agent", func() bool {
		nc, err1 := prom.TargetsUp("vbatch-coordinator")
		na, err2 := prom.TargetsUp("vbatch-agent")
		return err1 == nil && err2 == nil && nc == len(c.Coords) && na == len(agents)
	})

	// A batch to completion, and one failed API call so that the error
	// panels have something to show.
	const n = 3000
	cl := c.client(0, "")
	f := upload(t, cl, "in.jsonl", chatLines(n, "sim-model"))
	b, err := cl.Batches.New(context.Background(), openai.BatchNewParams{
		InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow("24h"),
	})
	if err != nil {
		t.Fatalf("create batch: %v", err)
	}
	done := waitBatch(t, cl, b.ID, time.Minute, statusIs(openai.BatchStatusCompleted))
	if done.RequestCounts.Completed != n {
		t.Fatalf("batch counts %+v, want %d completed", done.RequestCounts, n)
	}
	resp, err := http.Get(c.Coords[1].URL() + "/v1/batches/batch_does_not_exist")
	if err != nil {
		t.Fatalf("get missing batch: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing batch answered %d, want 404", resp.StatusCode)
	}

	// Every dashboard query returns data once Prometheus has scraped the
	// finished batch (a few scrape and evaluation rounds).
	var empty []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		empty = empty[:0]
		for _, q := range queries {
			res, err := prom.Query(q.Expr)
			if err != nil {
				t.Fatalf("%s: %v", q.Where, err)
			}
			if len(res) == 0 {
				empty = append(empty, q.Where+": "+q.Expr)
			}
		}
		if len(empty) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if len(empty) > 0 {
		t.Fatalf("%d of %d dashboard queries return no series:\n  %s", len(empty), len(queries), strings.Join(empty, "\n  "))
	}
	t.Logf("%d dashboard queries return data", len(queries))

	// No agent-down alert while both agents run; then SIGKILL one: gossip
	// marks it dead and the alert fires for it, and only for it.
	// A pending alert alone is one evaluation in which gossip suspected a
	// live agent on a loaded machine; only a firing one is a false alarm.
	for _, a := range agentDown(t, prom) {
		if a.State == "firing" {
			t.Fatalf("%s already firing for %v with every agent alive", agentDownAlert, a.Labels)
		}
	}
	killed := agents[1]
	killed.Kill()
	killedAt := time.Now()
	var last []PromAlert
	deadline = time.Now().Add(45 * time.Second)
	for {
		last = agentDown(t, prom)
		for _, a := range last {
			if a.Labels["agent"] != killed.ID && a.State == "firing" {
				t.Fatalf("%s firing for %s, which is alive", agentDownAlert, a.Labels["agent"])
			}
		}
		for _, a := range last {
			if a.Labels["agent"] == killed.ID && a.State == "firing" {
				t.Logf("%s firing for %s %s after SIGKILL", agentDownAlert, killed.ID, time.Since(killedAt).Round(time.Second))
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not firing for %s 45s after SIGKILL; %s alerts: %+v", agentDownAlert, killed.ID, agentDownAlert, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// agentDown returns the pending or firing agent-down alerts.
func agentDown(t *testing.T, prom *Prometheus) []PromAlert {
	t.Helper()
	alerts, err := prom.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	var out []PromAlert
	for _, a := range alerts {
		if a.Labels["alertname"] == agentDownAlert {
			out = append(out, a)
		}
	}
	return out
}
