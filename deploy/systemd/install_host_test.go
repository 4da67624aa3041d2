package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hostInstallScript runs install.sh for real (users, owners) inside a
// private mount namespace whose /etc, /usr/local and /var are scratch
// copies, so the machine running the test is not changed. It refuses to
// install unless the marker files show the copies are mounted.
const hostInstallScript = `set -eu
s=$1; bins=$2; scratch=$3
mount --bind "$scratch/etc" /etc
mount --bind "$scratch/usrlocal" /usr/local
mount --bind "$scratch/var" /var
for d in /etc /usr/local /var; do
	[ -e "$d/.vbatch-install-test" ] || { echo "scratch $d not mounted" >&2; exit 97; }
done
sh "$s" --role all --bin-dir "$bins"
echo "== second run"
sh "$s" --role all --bin-dir "$bins"
echo "== state"
getent passwd vbatch
for p in /usr/local/bin/vbatch /etc/vbatch /etc/vbatch/tls /etc/vbatch/vbatch.env \
	/etc/vbatch/coordinator.json /etc/vbatch/agent.json /var/lib/vbatch /var/log/vbatch /var/cache/vbatch; do
	stat -c 'STAT %n %U:%G %a' "$p"
done
`

// TestInstallOnHost checks what staging cannot: the system user and the
// owners of what install.sh creates. It needs root and unshare(1), as the
// network partition tests in e2e need root.
func TestInstallOnHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the on-host install test needs root (user creation, chown, mount namespace)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) not found: %v", err)
	}
	scratch := t.TempDir()
	if out, err := exec.Command("cp", "-a", "/etc", filepath.Join(scratch, "etc")).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc: %v\n%s", err, out)
	}
	for _, d := range []string{"usrlocal", "var/lib", "var/log", "var/cache", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(scratch, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/run", filepath.Join(scratch, "var/run")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"etc", "usrlocal", "var"} {
		if err := os.WriteFile(filepath.Join(scratch, d, ".vbatch-install-test"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script, err := filepath.Abs(installScript)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", "private",
		"/bin/sh", "-c", hostInstallScript, "sh", script, fakeBins(t, "v1"), scratch)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("install in a mount namespace: %v\n%s", err, out)
	}
	first, rest, _ := strings.Cut(out, "== second run")
	second, state, _ := strings.Cut(rest, "== state")
	for _, s := range []string{"created    group vbatch", "created    user vbatch"} {
		if !strings.Contains(first, s) {
			t.Errorf("first run does not say %q:\n%s", s, first)
		}
		if strings.Contains(second, s) {
			t.Errorf("second run says %q again:\n%s", s, second)
		}
	}
	if noLogin := strings.Contains(state, "nologin") || strings.Contains(state, "/bin/false"); !strings.Contains(state, ":/var/lib/vbatch:") || !noLogin {
		t.Errorf("vbatch user: want home /var/lib/vbatch and no login shell:\n%s", state)
	}
	want := map[string]string{
		"/usr/local/bin/vbatch":        "root:root 755",
		"/etc/vbatch":                  "root:root 755",
		"/etc/vbatch/tls":              "root:vbatch 750",
		"/etc/vbatch/vbatch.env":       "root:root 600",
		"/etc/vbatch/coordinator.json": "root:vbatch 640",
		"/etc/vbatch/agent.json":       "root:vbatch 640",
		"/var/lib/vbatch":              "vbatch:vbatch 750",
		"/var/log/vbatch":              "vbatch:vbatch 750",
		"/var/cache/vbatch":            "vbatch:vbatch 750",
	}
	for path, w := range want {
		if !strings.Contains(state, "STAT "+path+" "+w+"\n") {
			t.Errorf("%s: want %s; got:\n%s", path, w, state)
		}
	}
	if _, err := os.Stat(filepath.Join(scratch, "etc/vbatch/coordinator.json")); err != nil {
		t.Errorf("the install did not land in the scratch /etc: %v", err)
	}
}
