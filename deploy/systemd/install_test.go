package systemd

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const installScript = repoRoot + "/scripts/install.sh"

// fakeBins writes stand-ins for bin/vbatch and bin/vbctl whose content is
// tagged, so a test can tell which copy was installed.
func fakeBins(t *testing.T, tag string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"vbatch", "vbctl"} {
		body := "#!/bin/sh\necho " + name + " " + tag + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// runInstall runs scripts/install.sh with /bin/sh (dash on Debian, which
// rejects most bashisms) and returns its output.
func runInstall(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{installScript}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// entry is what the test expects at one path of the installed tree.
type entry struct {
	mode fs.FileMode
	dir  bool
	same string // for a file: the source whose bytes it must hold
}

// installedTree is what `install.sh --role all` stages under the default
// prefix, beside the directories above these.
func installedTree(bins string) map[string]entry {
	cfg := func(name string) string { return filepath.Join(configDir, name) }
	tree := map[string]entry{
		"usr/local/bin/vbatch":                          {mode: 0o755, same: filepath.Join(bins, "vbatch")},
		"usr/local/bin/vbctl":                           {mode: 0o755, same: filepath.Join(bins, "vbctl")},
		"usr/local/share/vbatch":                        {mode: 0o755, dir: true},
		"usr/local/share/vbatch/examples":               {mode: 0o755, dir: true},
		"etc/systemd/system/vbatch-coordinator.service": {mode: 0o644, same: "vbatch-coordinator.service"},
		"etc/systemd/system/vbatch-agent.service":       {mode: 0o644, same: "vbatch-agent.service"},
		"etc/vbatch":                                    {mode: 0o755, dir: true},
		"etc/vbatch/tls":                                {mode: 0o750, dir: true},
		"etc/vbatch/vbatch.env":                         {mode: 0o600, same: cfg("vbatch.env.example")},
		"etc/vbatch/coordinator.json":                   {mode: 0o640, same: cfg("coordinator-1.json")},
		"etc/vbatch/agent.json":                         {mode: 0o640, same: cfg("agent.json")},
		"var/lib/vbatch":                                {mode: 0o750, dir: true},
		"var/log/vbatch":                                {mode: 0o750, dir: true},
		"var/cache/vbatch":                              {mode: 0o750, dir: true},
	}
	for _, name := range []string{"agent.json", "coordinator-1.json", "coordinator-2.json", "coordinator-3.json", "vbatch.env.example"} {
		tree["usr/local/share/vbatch/examples/"+name] = entry{mode: 0o644, same: cfg(name)}
	}
	return tree
}

// checkTree compares the staged root with want: every wanted path with
// its mode and bytes, and no other file (a leftover temporary file, say).
func checkTree(t *testing.T, root string, want map[string]entry) {
	t.Helper()
	for rel, e := range want {
		fi, err := os.Stat(filepath.Join(root, rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			continue
		}
		if fi.IsDir() != e.dir {
			t.Errorf("%s: directory %v, want %v", rel, fi.IsDir(), e.dir)
		}
		if fi.Mode().Perm() != e.mode {
			t.Errorf("%s: mode %#o, want %#o", rel, fi.Mode().Perm(), e.mode)
		}
		if e.same != "" {
			have, err1 := os.ReadFile(filepath.Join(root, rel))
			src, err2 := os.ReadFile(e.same)
			if err1 != nil || err2 != nil {
				t.Errorf("%s: %v %v", rel, err1, err2)
			} else if !bytes.Equal(have, src) {
				t.Errorf("%s differs from %s", rel, e.same)
			}
		}
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if _, ok := want[rel]; !ok {
			t.Errorf("unexpected file %s", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestInstallStaged(t *testing.T) {
	root := t.TempDir()
	bins := fakeBins(t, "v1")
	args := []string{"--role", "all", "--bin-dir", bins, "--dest-root", root, "--no-systemctl"}
	if out, err := runInstall(t, args...); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	checkTree(t, root, installedTree(bins))

	// Again, as an upgrade: new binaries replace the old, the operator's
	// configuration stays.
	edited := []byte(`{"node-id": "c7"}`)
	if err := os.WriteFile(filepath.Join(root, "etc/vbatch/coordinator.json"), edited, 0o640); err != nil {
		t.Fatal(err)
	}
	bins2 := fakeBins(t, "v2")
	args[3] = bins2
	out, err := runInstall(t, args...)
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	want := installedTree(bins2)
	want["etc/vbatch/coordinator.json"] = entry{mode: 0o640}
	checkTree(t, root, want)
	if have, _ := os.ReadFile(filepath.Join(root, "etc/vbatch/coordinator.json")); !bytes.Equal(have, edited) {
		t.Errorf("the edited coordinator.json was replaced:\n%s\ninstall said:\n%s", have, out)
	}
	for _, line := range []string{"kept       /etc/vbatch/coordinator.json (exists)", "installed  /usr/local/bin/vbatch", "unchanged  /etc/systemd/system/vbatch-agent.service"} {
		if !strings.Contains(out, line) {
			t.Errorf("second install does not say %q:\n%s", line, out)
		}
	}
}

func TestInstallRoleAndPrefix(t *testing.T) {
	root := t.TempDir()
	bins := fakeBins(t, "v1")
	if out, err := runInstall(t, "--role", "agent", "--prefix", "/opt/vbatch", "--bin-dir", bins, "--dest-root", root); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/vbatch-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("vbatch-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	// The unit follows the prefix, and nothing else changes.
	wantUnit := strings.Replace(string(src), "ExecStart=/usr/local/bin/vbatch ", "ExecStart=/opt/vbatch/bin/vbatch ", 1)
	if string(unit) != wantUnit {
		t.Errorf("installed agent unit:\n%s\nwant:\n%s", unit, wantUnit)
	}
	for _, rel := range []string{"opt/vbatch/bin/vbatch", "opt/vbatch/bin/vbctl", "etc/vbatch/agent.json", "var/cache/vbatch"} {
		if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
			t.Errorf("agent install: %v", err)
		}
	}
	for _, rel := range []string{"etc/systemd/system/vbatch-coordinator.service", "etc/vbatch/coordinator.json", "usr/local"} {
		if _, err := os.Stat(filepath.Join(root, rel)); err == nil {
			t.Errorf("agent install made %s", rel)
		}
	}

	root = t.TempDir()
	if out, err := runInstall(t, "--role", "coordinator", "--bin-dir", bins, "--dest-root", root); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	for _, rel := range []string{"etc/systemd/system/vbatch-agent.service", "etc/vbatch/agent.json", "var/cache/vbatch"} {
		if _, err := os.Stat(filepath.Join(root, rel)); err == nil {
			t.Errorf("coordinator install made %s", rel)
		}
	}
}

func TestInstallRejectsBadArguments(t *testing.T) {
	bins := fakeBins(t, "v1")
	for _, c := range []struct {
		name, wantErr string
		args          []string
	}{
		{"no role", "--role is required", nil},
		{"unknown role", "--role must be coordinator, agent or all", []string{"--role", "gpu"}},
		{"relative prefix", "--prefix must be an absolute path", []string{"--role", "agent", "--prefix", "opt"}},
		{"odd prefix", "--prefix may hold only", []string{"--role", "agent", "--prefix", "/opt/a#b"}},
		{"unknown flag", "unknown argument: --force", []string{"--role", "agent", "--force"}},
		{"missing value", "--dest-root needs a value", []string{"--role", "agent", "--dest-root"}},
		{"no binaries", "not found or not executable", []string{"--role", "agent", "--bin-dir", t.TempDir()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "root")
			// The case's own arguments come last and win.
			args := append([]string{"--bin-dir", bins, "--dest-root", root}, c.args...)
			out, err := runInstall(t, args...)
			if err == nil {
				t.Fatalf("install %v succeeded:\n%s", args, out)
			}
			if !strings.Contains(out, c.wantErr) {
				t.Errorf("install %v: want %q in:\n%s", args, c.wantErr, out)
			}
			if _, err := os.Stat(root); err == nil {
				t.Errorf("install %v wrote %s before failing", args, root)
			}
		})
	}
}
