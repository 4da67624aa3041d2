package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDashboardQueriesParse checks every dashboard query with promtool,
// as recording rules (Grafana's $__ variables replaced by a range). It
// uses VBATCH_PROMTOOL, else promtool on PATH, and fails (never skips)
// when there is none, as the monitoring issue asks.
func TestDashboardQueriesParse(t *testing.T) {
	promtool := requireTool(t, "VBATCH_PROMTOOL", "promtool", "prometheus")
	gen, err := Dashboards()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboards\n    rules:\n")
	n := 0
	for _, raw := range gen {
		for _, expr := range metricExprs(t, raw) {
			expr = strings.NewReplacer("$__rate_interval", "1m", "$__range", "1h").Replace(expr)
			n++
			fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %q\n", n, expr)
		}
	}
	file := filepath.Join(t.TempDir(), "dashboards.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("%d dashboard queries parse", n)
}

// requireTool returns the path of a tool the test needs: $env if set, else
// name on PATH. It fails the test (never skips) when there is none, saying
// which Debian package provides it.
func requireTool(t *testing.T, env, name, debianPackage string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install it (Debian: apt-get install %s) or set %s", name, debianPackage, env)
	}
	return p
}
