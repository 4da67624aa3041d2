package api

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestPprofCmdlineRedactsSecrets: /debug/pprof/cmdline shows the command
// line with the values of secret flags replaced, in both flag forms and
// inside an argument that carries another program's flags.
func TestPprofCmdlineRedactsSecrets(t *testing.T) {
	args := []string{"/usr/bin/vbatch", "coordinator",
		"--root-key", "root-secret", "--gossip-key=gossip-secret", "-engine-api-key", "engine-secret",
		"--api-key=sim-secret", "--vllm-args", "--max-model-len 4096 --api-key vllm-secret",
		"--vllm-args=--api-key=vllm-secret-2 --port 1", "--node-id", "c1", "--log-level=warn"}
	old := commandLine
	commandLine = func() []string { return args }
	t.Cleanup(func() { commandLine = old })

	e := rootEnv(t)
	r := e.do(http.MethodGet, "/debug/pprof/cmdline", testRoot, nil)
	if r.status != http.StatusOK {
		t.Fatalf("cmdline: %d %s", r.status, r.body)
	}
	got := strings.Split(string(r.body), "\x00")
	want := []string{"/usr/bin/vbatch", "coordinator",
		"--root-key", "REDACTED", "--gossip-key=REDACTED", "-engine-api-key", "REDACTED",
		"--api-key=REDACTED", "--vllm-args", "--max-model-len 4096 --api-key REDACTED",
		"--vllm-args=--api-key=REDACTED --port 1", "--node-id", "c1", "--log-level=warn"}
	if !slices.Equal(got, want) {
		t.Fatalf("cmdline\n got %q\nwant %q", got, want)
	}
	for _, secret := range []string{"root-secret", "gossip-secret", "engine-secret", "sim-secret", "vllm-secret"} {
		if strings.Contains(string(r.body), secret) {
			t.Fatalf("cmdline shows %s: %q", secret, r.body)
		}
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q", ct)
	}
}

// TestRedactArgsLeavesOthersAlone: arguments that are not secret flags or
// their values pass through unchanged, spacing included.
func TestRedactArgsLeavesOthersAlone(t *testing.T) {
	args := []string{"vbatch", "agent", "--engine-url", "http://h:8000", "--vllm-args", "--tp  2", "--", "-"}
	if got := redactArgs(args); !slices.Equal(got, args) {
		t.Fatalf("redactArgs(%q) = %q", args, got)
	}
	// A secret flag as the last argument has no value to hide.
	if got := redactArgs([]string{"vbatch", "--root-key"}); !slices.Equal(got, []string{"vbatch", "--root-key"}) {
		t.Fatalf("trailing secret flag: %q", got)
	}
}
