package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestAlloyShipsFromEveryHost checks what running the one Alloy file on
// every coordinator and GPU host needs: the Loki URL comes from LOKI_URL
// (the compose stack's Loki when unset, which the compose file passes
// through), and every line carries a host label, the journal's hostname for
// journal lines.
func TestAlloyShipsFromEveryHost(t *testing.T) {
	raw, err := os.ReadFile("alloy/config.alloy")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if !regexp.MustCompile(`url\s*=\s*coalesce\(sys\.env\("LOKI_URL"\),\s*"http://loki:3100/loki/api/v1/push"\)`).MatchString(text) {
		t.Error(`the Loki URL is not coalesce(sys.env("LOKI_URL"), the stack's Loki)`)
	}
	if !regexp.MustCompile(`external_labels\s*=\s*\{\s*host\s*=\s*coalesce\(sys\.env\("VBATCH_LOG_HOST"\),\s*constants\.hostname\)\s*\}`).MatchString(text) {
		t.Error("lines carry no host label")
	}
	if !regexp.MustCompile(`(?s)source_labels\s*=\s*\["__journal__hostname"\]\s*target_label\s*=\s*"host"`).MatchString(text) {
		t.Error("journal lines do not take the journal's hostname as host")
	}
	compose, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{"LOKI_URL: ${LOKI_URL:-http://loki:3100/loki/api/v1/push}", "VBATCH_LOG_HOST: ${VBATCH_LOG_HOST:-"} {
		if !strings.Contains(string(compose), env) {
			t.Errorf("the alloy service does not set %s", env)
		}
	}
}

// TestUnauthenticatedPortsStayLocal checks that the services without a
// login publish on loopback: Prometheus (its lifecycle API lets anyone
// POST /-/quit), Loki (unless LOKI_BIND says where) and Alloy's UI.
// Grafana has its own login and stays reachable.
func TestUnauthenticatedPortsStayLocal(t *testing.T) {
	var doc struct {
		Services map[string]struct {
			Ports []string `yaml:"ports"`
		} `yaml:"services"`
	}
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"prometheus": "127.0.0.1:9090:9090",
		"loki":       "${LOKI_BIND:-127.0.0.1}:3100:3100",
		"alloy":      "127.0.0.1:12345:12345",
	}
	for svc, p := range want {
		if ports := doc.Services[svc].Ports; len(ports) != 1 || ports[0] != p {
			t.Errorf("%s publishes %v, want only %s", svc, ports, p)
		}
	}
	if ports := doc.Services["grafana"].Ports; len(ports) != 1 || ports[0] != "3000:3000" {
		t.Errorf("grafana publishes %v, want 3000:3000", ports)
	}
}
