package systemd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/agent"
)

// units are the shipped units and the vbatch subcommand each runs.
var units = []struct{ file, role string }{
	{"vbatch-coordinator.service", "coordinator"},
	{"vbatch-agent.service", "agent"},
}

// maxExposure is the highest `systemd-analyze security` exposure (0 is
// best, 10 worst) each unit may have; a change that loosens the sandbox
// past it must raise the figure here on purpose. The agent's is higher
// because vLLM needs the GPUs' device nodes and JIT-compiles code.
var maxExposure = map[string]float64{
	"vbatch-coordinator.service": 1.5,
	"vbatch-agent.service":       2.5,
}

// systemdAnalyze returns the path of systemd-analyze; the test fails
// without it, as CI installs it.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (Debian: apt-get install systemd): %v", err)
	}
	return p
}

// testableCopy writes unit text to dir under its own name with the
// executables it names pointed at stubs, since verify checks that they
// exist and this host need not have vbatch installed nor /bin/kill
// (procps). The shipped file is left as it is.
func testableCopy(t *testing.T, dir, name string, text []byte) string {
	t.Helper()
	vbatch, kill := filepath.Join(dir, "bin", "vbatch"), filepath.Join(dir, "bin", "kill")
	writeStub(t, vbatch)
	writeStub(t, kill)
	s := string(text)
	for _, r := range []struct{ from, to string }{
		{"ExecStart=/usr/local/bin/vbatch ", "ExecStart=" + vbatch + " "},
		{"ExecReload=/bin/kill ", "ExecReload=" + kill + " "},
	} {
		if !strings.Contains(s, r.from) {
			t.Fatalf("%s has no %q line", name, r.from)
		}
		s = strings.ReplaceAll(s, r.from, r.to)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// verifyUnit runs `systemd-analyze verify` on a unit file and returns
// what systemd said about it: every output line naming the unit, warnings
// such as unknown keys included, which do not change the exit status.
func verifyUnit(t *testing.T, path string) (problems []string, err error) {
	t.Helper()
	cmd := exec.Command(systemdAnalyze(t), "verify", "--no-pager", path)
	out, runErr := cmd.CombinedOutput()
	name := filepath.Base(path)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case line == "":
		case strings.Contains(line, name):
			problems = append(problems, line)
		default:
			t.Logf("systemd-analyze verify: %s", line)
		}
	}
	if runErr != nil {
		return problems, fmt.Errorf("systemd-analyze verify %s: %w\n%s", name, runErr, out)
	}
	return problems, nil
}

func TestUnitsVerify(t *testing.T) {
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			text, err := os.ReadFile(u.file)
			if err != nil {
				t.Fatal(err)
			}
			problems, err := verifyUnit(t, testableCopy(t, t.TempDir(), u.file, text))
			if err != nil {
				t.Error(err)
			}
			for _, p := range problems {
				t.Errorf("systemd-analyze verify: %s", p)
			}
		})
	}
}

// TestVerifyCatchesWarnings makes sure the check above sees the warnings
// this systemd prints for a mistake that does not fail verify.
func TestVerifyCatchesWarnings(t *testing.T) {
	text, err := os.ReadFile(units[0].file)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(text), "[Service]\n", "[Service]\nNoSuchSetting=1\n", 1)
	problems, err := verifyUnit(t, testableCopy(t, t.TempDir(), units[0].file, []byte(bad)))
	if err != nil {
		t.Logf("verify also failed: %v", err)
	}
	if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "NoSuchSetting") }) {
		t.Fatalf("an unknown key was not reported; systemd said: %q", problems)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9]+(?:\.[0-9]+)?)`)

func TestUnitsSecurityExposure(t *testing.T) {
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			text, err := os.ReadFile(u.file)
			if err != nil {
				t.Fatal(err)
			}
			path := testableCopy(t, t.TempDir(), u.file, text)
			out, err := exec.Command(systemdAnalyze(t), "security", "--offline=true", "--no-pager", path).CombinedOutput()
			if err != nil {
				t.Fatalf("systemd-analyze security --offline=true (needs systemd 250 or later): %v\n%s", err, out)
			}
			m := exposureRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no overall exposure level in:\n%s", out)
			}
			got, err := strconv.ParseFloat(string(m[1]), 64)
			if err != nil {
				t.Fatal(err)
			}
			if limit := maxExposure[u.file]; got > limit {
				t.Errorf("exposure %.1f, want at most %.1f:\n%s", got, limit, out)
			}
		})
	}
}

// TestUnitsCommon pins what both units must have: the user, directories,
// configuration, lifecycle and the sandbox that applies to both.
func TestUnitsCommon(t *testing.T) {
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			unit := loadUnit(t, u.file)
			want := map[string]string{
				"Type":                    "simple",
				"User":                    "vbatch",
				"Group":                   "vbatch",
				"ExecStart":               "/usr/local/bin/vbatch " + u.role + " --config /etc/vbatch/" + u.role + ".json",
				"ExecReload":              "/bin/kill -HUP $MAINPID",
				"KillSignal":              "SIGTERM",
				"Restart":                 "on-failure",
				"LimitNOFILE":             "65536",
				"StateDirectory":          "vbatch",
				"LogsDirectory":           "vbatch",
				"ConfigurationDirectory":  "vbatch",
				"EnvironmentFile":         "-/etc/vbatch/vbatch.env",
				"NoNewPrivileges":         "yes",
				"CapabilityBoundingSet":   "",
				"ProtectSystem":           "strict",
				"ProtectHome":             "yes",
				"PrivateTmp":              "yes",
				"ProtectKernelTunables":   "yes",
				"ProtectKernelModules":    "yes",
				"ProtectControlGroups":    "yes",
				"RestrictNamespaces":      "yes",
				"RestrictSUIDSGID":        "yes",
				"LockPersonality":         "yes",
				"SystemCallArchitectures": "native",
			}
			for key, val := range want {
				if !unit.has("Service", key) {
					t.Errorf("[Service] %s= is missing, want %q", key, val)
				} else if got := unit.last("Service", key); got != val {
					t.Errorf("[Service] %s=%s, want %q", key, got, val)
				}
			}
			for _, key := range []string{"RestartSec", "TimeoutStopSec"} {
				if _, err := time.ParseDuration(unit.last("Service", key) + "s"); err != nil {
					t.Errorf("[Service] %s=%q, want a number of seconds", key, unit.last("Service", key))
				}
			}
			fams := unit.words("Service", "RestrictAddressFamilies")
			slices.Sort(fams)
			if want := []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}; !slices.Equal(fams, want) {
				// AF_NETLINK: Go lists interfaces over netlink to pick the
				// address gossip and raft advertise.
				t.Errorf("RestrictAddressFamilies=%v, want %v", fams, want)
			}
			if unit.has("Service", "RemoveIPC") {
				t.Error("RemoveIPC= would remove vLLM's shared memory whenever either unit stops (both run as vbatch)")
			}
			for _, key := range []string{"After", "Wants"} {
				if !slices.Contains(unit.words("Unit", key), "network-online.target") {
					t.Errorf("[Unit] %s= lacks network-online.target", key)
				}
			}
			if got := unit.last("Install", "WantedBy"); got != "multi-user.target" {
				t.Errorf("[Install] WantedBy=%s, want multi-user.target", got)
			}
		})
	}
}

func TestCoordinatorUnitSandbox(t *testing.T) {
	unit := loadUnit(t, "vbatch-coordinator.service")
	for key, val := range map[string]string{
		"PrivateDevices":         "yes",
		"MemoryDenyWriteExecute": "yes",
		"ProtectClock":           "yes",
		"ProtectKernelLogs":      "yes",
		"RestrictRealtime":       "yes",
		"SystemCallErrorNumber":  "EPERM",
		"ProtectProc":            "invisible",
		"ProtectHostname":        "yes",
		"DevicePolicy":           "closed",
		"PrivateMounts":          "yes",
		"AmbientCapabilities":    "",
		"LogsDirectoryMode":      "0750",
		"StateDirectoryMode":     "0750",
	} {
		if got := unit.last("Service", key); !unit.has("Service", key) || got != val {
			t.Errorf("[Service] %s=%q, want %q", key, got, val)
		}
	}
	if filters := unit.words("Service", "SystemCallFilter"); !slices.Contains(filters, "@system-service") {
		t.Errorf("SystemCallFilter=%q, want an @system-service allow list", filters)
	}
}

func TestAgentUnitLeavesGPUsUsable(t *testing.T) {
	unit := loadUnit(t, "vbatch-agent.service")
	// Any of these makes systemd install a device allow list, which hides
	// /dev/nvidia* from CUDA.
	for _, key := range []string{"DevicePolicy", "DeviceAllow"} {
		if unit.has("Service", key) {
			t.Errorf("[Service] %s= is set: CUDA would lose /dev/nvidia*", key)
		}
	}
	for _, key := range []string{"PrivateDevices", "ProtectClock", "MemoryDenyWriteExecute"} {
		if v := unit.last("Service", key); v != "" && v != "no" {
			t.Errorf("[Service] %s=%s breaks vLLM (devices or JIT)", key, v)
		}
	}
	for _, f := range unit["Service"]["SystemCallFilter"] {
		// "~" turns the whole line into a deny list.
		if !strings.HasPrefix(f, "~") {
			t.Errorf("SystemCallFilter=%s is an allow list; the agent may only deny groups", f)
		}
	}
	if got := unit.last("Service", "KillMode"); got != "mixed" {
		t.Errorf("KillMode=%q, want mixed: SIGTERM must reach the agent alone so it drains before stopping vLLM", got)
	}
	stop, err := strconv.Atoi(unit.last("Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec=%q: %v", unit.last("Service", "TimeoutStopSec"), err)
	}
	if shutdown := agent.DefaultConfig().ShutdownTimeout; time.Duration(stop)*time.Second < shutdown+30*time.Second {
		t.Errorf("TimeoutStopSec=%d leaves no margin over the agent's shutdown timeout %s", stop, shutdown)
	}
	for _, env := range []string{"HOME=/var/lib/vbatch", "XDG_CACHE_HOME=/var/cache/vbatch"} {
		if !slices.Contains(unit.words("Service", "Environment"), env) {
			t.Errorf("Environment=%s missing: vLLM's caches must land in a writable directory", env)
		}
	}
	if got := unit.last("Service", "CacheDirectory"); got != "vbatch" {
		t.Errorf("CacheDirectory=%q, want vbatch", got)
	}
}
