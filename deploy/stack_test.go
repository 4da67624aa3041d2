package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// composeFile is the monitoring stack a user starts with one command.
const composeFile = "docker-compose.monitoring.yml"

// TestComposeFileValid runs the Compose schema check of Debian's
// docker-compose (`config -q`, which needs no Docker engine) on the stack.
// That docker-compose (1.29) predates the Compose Specification's top-level
// `name`, which Compose v2 reads, so the check runs on a copy without it;
// everything else is checked by its schema, with every profile enabled.
// It uses VBATCH_DOCKER_COMPOSE, else docker-compose on PATH, and fails
// (never skips) when there is none.
func TestComposeFileValid(t *testing.T) {
	bin := requireTool(t, "VBATCH_DOCKER_COMPOSE", "docker-compose", "docker-compose")
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	lines = slices.DeleteFunc(lines, func(l string) bool { return strings.HasPrefix(l, "name:") })
	copyPath := filepath.Join(t.TempDir(), composeFile)
	if err := os.WriteFile(copyPath, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	run := func(env []string, args ...string) (string, error) {
		// Relative bind mounts resolve against deploy/, as they do for
		// the original file.
		cmd := exec.Command(bin, append([]string{"-f", copyPath, "--project-directory", here, "--profile", "gpu"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run([]string{"GRAFANA_ADMIN_PASSWORD=secret"}, "config", "-q"); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	services, err := run([]string{"GRAFANA_ADMIN_PASSWORD=secret"}, "config", "--services")
	if err != nil {
		t.Fatalf("docker-compose config --services: %v\n%s", err, services)
	}
	for _, want := range []string{"prometheus", "grafana", "loki", "alloy", "node-exporter", "nvidia-exporter"} {
		if !slices.Contains(strings.Fields(services), want) {
			t.Errorf("service %s missing from the stack (have %q)", want, services)
		}
	}
	// Grafana must not start with a default password.
	if out, err := run([]string{"GRAFANA_ADMIN_PASSWORD="}, "config", "-q"); err == nil {
		t.Errorf("the stack validates without GRAFANA_ADMIN_PASSWORD:\n%s", out)
	}
}

// TestComposeStackShape checks what the stack must provide beyond schema
// validity: the ports, Prometheus's retention, and that every file a
// service mounts from this directory exists.
func TestComposeStackShape(t *testing.T) {
	var doc struct {
		Name     string `yaml:"name"`
		Services map[string]struct {
			Image    string   `yaml:"image"`
			Command  []string `yaml:"command"`
			Ports    []string `yaml:"ports"`
			Volumes  []string `yaml:"volumes"`
			Profiles []string `yaml:"profiles"`
		} `yaml:"services"`
	}
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Name == "" {
		t.Error("the stack has no project name")
	}
	ports := map[string]string{"prometheus": "9090", "grafana": "3000", "loki": "3100", "node-exporter": "9100", "nvidia-exporter": "9835"}
	for svc, port := range ports {
		s, ok := doc.Services[svc]
		if !ok {
			t.Errorf("no %s service", svc)
			continue
		}
		if !slices.ContainsFunc(s.Ports, func(p string) bool { return strings.HasPrefix(p, port+":") || strings.Contains(p, ":"+port+":") }) {
			t.Errorf("%s does not publish :%s (ports %v)", svc, port, s.Ports)
		}
	}
	if !slices.Contains(doc.Services["prometheus"].Command, "--storage.tsdb.retention.time=30d") {
		t.Errorf("prometheus does not keep 30 days: %v", doc.Services["prometheus"].Command)
	}
	if !slices.Contains(doc.Services["nvidia-exporter"].Profiles, "gpu") {
		t.Error("the GPU exporter is not behind the gpu profile")
	}
	for name, s := range doc.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, "./") {
				continue
			}
			if _, err := os.Stat(src); err != nil {
				t.Errorf("%s mounts %s, which is not in deploy/: %v", name, src, err)
			}
		}
	}
}

// TestLokiConfig checks the Loki settings the stack promises: TSDB schema
// v13, 30 days of retention applied by the compactor, 16 MB/s ingestion
// with 32 MB bursts, and structured metadata allowed (Alloy sends
// request_id and batch_id that way).
func TestLokiConfig(t *testing.T) {
	var cfg struct {
		Server struct {
			HTTPListenPort int `yaml:"http_listen_port"`
		} `yaml:"server"`
		SchemaConfig struct {
			Configs []struct {
				Store  string `yaml:"store"`
				Schema string `yaml:"schema"`
			} `yaml:"configs"`
		} `yaml:"schema_config"`
		Compactor struct {
			RetentionEnabled   bool   `yaml:"retention_enabled"`
			DeleteRequestStore string `yaml:"delete_request_store"`
		} `yaml:"compactor"`
		Limits struct {
			RetentionPeriod         string `yaml:"retention_period"`
			IngestionRateMB         int    `yaml:"ingestion_rate_mb"`
			IngestionBurstSizeMB    int    `yaml:"ingestion_burst_size_mb"`
			AllowStructuredMetadata bool   `yaml:"allow_structured_metadata"`
		} `yaml:"limits_config"`
	}
	raw, err := os.ReadFile("loki/loki.yml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	n := len(cfg.SchemaConfig.Configs)
	switch {
	case cfg.Server.HTTPListenPort != 3100:
		t.Errorf("http port %d", cfg.Server.HTTPListenPort)
	case n == 0 || cfg.SchemaConfig.Configs[n-1].Schema != "v13" || cfg.SchemaConfig.Configs[n-1].Store != "tsdb":
		t.Errorf("schema %+v, want tsdb v13", cfg.SchemaConfig.Configs)
	case !cfg.Compactor.RetentionEnabled || cfg.Compactor.DeleteRequestStore == "":
		t.Errorf("compactor %+v: retention must be on, with a delete request store", cfg.Compactor)
	case cfg.Limits.RetentionPeriod != "720h":
		t.Errorf("retention %q, want 720h", cfg.Limits.RetentionPeriod)
	case cfg.Limits.IngestionRateMB != 16 || cfg.Limits.IngestionBurstSizeMB != 32:
		t.Errorf("ingestion %d MB/s burst %d MB, want 16 and 32", cfg.Limits.IngestionRateMB, cfg.Limits.IngestionBurstSizeMB)
	case !cfg.Limits.AllowStructuredMetadata:
		t.Error("structured metadata not allowed")
	}
}

// TestAlloyConfig checks that Alloy ships the JSON logs with level and
// logger as labels and request_id and batch_id as structured metadata
// (never labels: their values are unbounded), to the stack's Loki.
func TestAlloyConfig(t *testing.T) {
	raw, err := os.ReadFile("alloy/config.alloy")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	block := func(kind string) string {
		re := regexp.MustCompile(`(?s)` + regexp.QuoteMeta(kind) + `\s*\{(.*?)\n\s*\}`)
		m := re.FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no %s block", kind)
		}
		return m[1]
	}
	labels, meta := block("stage.labels"), block("stage.structured_metadata")
	for _, k := range []string{"level", "logger"} {
		if !strings.Contains(labels, k) {
			t.Errorf("%s is not a label", k)
		}
	}
	for _, k := range []string{"request_id", "batch_id"} {
		if strings.Contains(labels, k) {
			t.Errorf("%s is a label; its values are unbounded", k)
		}
		if !strings.Contains(meta, k) {
			t.Errorf("%s is not structured metadata", k)
		}
	}
	if !strings.Contains(text, `"http://loki:3100/loki/api/v1/push"`) {
		t.Error("Alloy does not push to the stack's Loki")
	}
	if strings.Count(text, "{") != strings.Count(text, "}") {
		t.Error("unbalanced braces")
	}
}
