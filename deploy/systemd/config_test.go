package systemd

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const configDir = repoRoot + "/deploy/config"

// coordinatorConfigs are the example coordinators of a three-node cluster.
var coordinatorConfigs = []string{"coordinator-1.json", "coordinator-2.json", "coordinator-3.json"}

// readConfig decodes one example config.
func readConfig(t *testing.T, name string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(configDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var kv map[string]any
	if err := json.Unmarshal(data, &kv); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return kv
}

// str returns a string key ("" when absent or not a string).
func str(kv map[string]any, key string) string {
	s, _ := kv[key].(string)
	return s
}

// list returns a list key's strings.
func list(t *testing.T, name string, kv map[string]any, key string) []string {
	t.Helper()
	raw, ok := kv[key].([]any)
	if !ok {
		t.Fatalf("%s: %q is not a list", name, key)
	}
	out := make([]string, 0, len(raw))
	for _, v := range raw {
		s, ok := v.(string)
		if !ok {
			t.Fatalf("%s: %q holds %v, not a string", name, key, v)
		}
		out = append(out, s)
	}
	return out
}

// TestConfigsLoad feeds every example to the real binary's --config
// loader. A flag given on the command line makes the command fail right
// after the file is applied and before anything starts, so the expected
// error proves that every key is a flag and every value parses.
func TestConfigsLoad(t *testing.T) {
	bin := vbatchBinary(t)
	type loadCase struct {
		file, role string
		stop       []string // makes the command fail once the config is applied
		wantErr    string
	}
	cases := []loadCase{{"agent.json", "agent", []string{"--engine", "none"}, `unknown --engine "none"`}}
	for _, f := range coordinatorConfigs {
		cases = append(cases, loadCase{f, "coordinator", []string{"--bootstrap-expect", "0"}, "--bootstrap-expect must be at least 1"})
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			path, err := filepath.Abs(filepath.Join(configDir, c.file))
			if err != nil {
				t.Fatal(err)
			}
			args := append([]string{c.role, "--config", path}, c.stop...)
			cmd := exec.CommandContext(ctx, bin, args...)
			dir := t.TempDir()
			cmd.Dir = dir
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("vbatch %s ran to completion; want it stopped by %v:\n%s", strings.Join(args, " "), c.stop, out)
			}
			if !strings.Contains(string(out), c.wantErr) {
				t.Fatalf("vbatch %s: want the error %q (config applied), got:\n%s", strings.Join(args, " "), c.wantErr, out)
			}
		})
	}
}

// TestConfigsDescribeOneCluster checks that the examples fit together: three
// coordinators that find each other, and agents that find them, all in one
// cluster, with TLS and gossip encryption on and files where the units and
// scripts/install.sh put them.
func TestConfigsDescribeOneCluster(t *testing.T) {
	var joins [][]string
	var gossipAddrs []string
	ids := map[string]bool{}
	hosts := map[string]bool{}
	for _, name := range coordinatorConfigs {
		kv := readConfig(t, name)
		id := str(kv, "node-id")
		if id == "" || ids[id] {
			t.Errorf("%s: node-id %q is empty or repeated", name, id)
		}
		ids[id] = true
		if got, ok := kv["bootstrap-expect"].(float64); !ok || int(got) != len(coordinatorConfigs) {
			t.Errorf("%s: bootstrap-expect %v, want %d", name, kv["bootstrap-expect"], len(coordinatorConfigs))
		}
		host := ""
		for _, key := range []string{"rpc-addr", "raft-addr", "gossip-addr"} {
			h, _, err := net.SplitHostPort(str(kv, key))
			if err != nil || net.ParseIP(h) == nil {
				t.Errorf("%s: %s %q: want this host's IP and a port", name, key, str(kv, key))
				continue
			}
			if host != "" && h != host {
				t.Errorf("%s: %s is on %s, the other addresses on %s", name, key, h, host)
			}
			host = h
		}
		if hosts[host] {
			t.Errorf("%s: host %s is used by another coordinator", name, host)
		}
		hosts[host] = true
		gossipAddrs = append(gossipAddrs, str(kv, "gossip-addr"))
		joins = append(joins, list(t, name, kv, "join"))
		checkCommon(t, name, kv, "server")
	}
	slices.Sort(gossipAddrs)
	for i, j := range joins {
		j = slices.Clone(j)
		slices.Sort(j)
		if !slices.Equal(j, gossipAddrs) {
			t.Errorf("%s: join %v, want every coordinator's gossip address %v", coordinatorConfigs[i], j, gossipAddrs)
		}
	}

	kv := readConfig(t, "agent.json")
	if _, ok := kv["node-id"]; ok {
		t.Error("agent.json sets node-id: one file serves every agent, whose id comes from its certificate")
	}
	j := list(t, "agent.json", kv, "join")
	slices.Sort(j)
	if !slices.Equal(j, gossipAddrs) {
		t.Errorf("agent.json: join %v, want the coordinators' gossip addresses %v", j, gossipAddrs)
	}
	if str(kv, "engine") == "vllm" {
		if models := list(t, "agent.json", kv, "model"); len(models) != 1 {
			t.Errorf("agent.json: --engine vllm serves exactly one model, got %v", models)
		}
		if !filepath.IsAbs(str(kv, "vllm-bin")) {
			t.Errorf("agent.json: vllm-bin %q should be absolute: a venv is not on the unit's PATH", str(kv, "vllm-bin"))
		}
	}
	checkCommon(t, "agent.json", kv, "agent")
}

// checkCommon checks what coordinators and agents share: cluster name,
// TLS and gossip key files under /etc/vbatch, state under /var/lib/vbatch.
func checkCommon(t *testing.T, name string, kv map[string]any, role string) {
	t.Helper()
	if got := str(kv, "cluster-name"); got != "global" {
		t.Errorf("%s: cluster-name %q, want the same (global) everywhere", name, got)
	}
	want := map[string]string{
		"tls-ca":          "/etc/vbatch/tls/ca.pem",
		"tls-cert":        "/etc/vbatch/tls/" + role + ".pem",
		"tls-key":         "/etc/vbatch/tls/" + role + "-key.pem",
		"gossip-key-file": "/etc/vbatch/gossip.key",
	}
	for key, path := range want {
		if got := str(kv, key); got != path {
			t.Errorf("%s: %s %q, want %q", name, key, got, path)
		}
	}
	// ProtectSystem=strict leaves only the unit's StateDirectory (and
	// LogsDirectory) writable.
	if dd := str(kv, "data-dir"); !strings.HasPrefix(dd, "/var/lib/vbatch/") {
		t.Errorf("%s: data-dir %q is outside /var/lib/vbatch, which the unit cannot write", name, dd)
	}
	if lf := str(kv, "log-file"); lf != "" && !strings.HasPrefix(lf, "/var/log/vbatch/") {
		t.Errorf("%s: log-file %q is outside /var/log/vbatch, which the unit cannot write", name, lf)
	}
}

func TestEnvExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(configDir, "vbatch.env.example"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, ok := strings.Cut(line, "=")
		if !ok || name == "" || strings.ContainsAny(name, " \t$") {
			t.Errorf("line %d: %q is not VAR=value (systemd's EnvironmentFile= format)", i+1, line)
			continue
		}
		vars[name] = true
	}
	for _, v := range []string{"VBATCH_ROOT_KEY", "SENTRY_DSN"} {
		if !vars[v] {
			t.Errorf("vbatch.env.example does not set %s", v)
		}
	}
}
