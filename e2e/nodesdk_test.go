package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// nodeSDKTimeout bounds the Node script; npmTimeout bounds `npm ci`.
const (
	nodeSDKTimeout = 3 * time.Minute
	npmTimeout     = 5 * time.Minute
)

// TestNodeSDK runs e2e/node/sdk_check.mjs, which drives a real cluster
// through the official openai Node SDK (files, batches, lists with
// auto-pagination, error classes, models, chat with and without streaming)
// and fails on any object or status code the SDK does not expect.
func TestNodeSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes and Node")
	}
	node, npm := lookTool(t, "node"), lookTool(t, "npm")
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), npmTimeout)
		defer cancel()
		if out, err := runIn(ctx, dir, nil, npm, "ci", "--no-audit", "--no-fund"); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}

	rootKey := "root-" + strings.Repeat("n", 32)
	c := StartCluster(t, 3, ClusterOptions{
		Extra: []string{"--root-key", rootKey, "--chunk-size", "5"},
		HTTP:  &http.Client{Timeout: 10 * time.Second, Transport: &keyTransport{key: rootKey, base: http.DefaultTransport}},
	})
	sim := c.StartSim(t, "sim")
	c.StartAgent(t, "a1", "--engine", "openai", "--engine-url", "http://"+sim.Addr, "--part-lines", "5")
	c.WaitAgents(t, 1)
	// A follower: every write the SDK makes is forwarded to the leader.
	follower := c.Running(c.WaitLeader(30 * time.Second))[0]

	ctx, cancel := context.WithTimeout(context.Background(), nodeSDKTimeout)
	defer cancel()
	env := []string{
		"VBATCH_BASE_URL=" + c.Coords[follower].URL() + "/v1",
		"VBATCH_API_KEY=" + rootKey,
		"VBATCH_MODEL=sim-model",
	}
	start := time.Now()
	out, err := runIn(ctx, dir, env, node, "sdk_check.mjs")
	if err != nil {
		t.Fatalf("node sdk_check.mjs against %s (after %s): %v\n%s\n%s", c.Coords[follower].URL(),
			time.Since(start).Round(time.Millisecond), err, out, c.Logs())
	}
	t.Logf("node sdk_check.mjs in %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
}

// lookTool returns the path of a tool the test cannot run without.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH: install Node.js and npm (.ci/run installs them), or run with -short to skip", name)
	}
	return p
}

// runIn runs a command in dir with extra environment and returns its
// combined output.
func runIn(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return out.String(), err
}
