//go:build unix

package engine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeVLLMScript writes an executable `vllm` into a temp dir that runs the
// test binary as a fake vLLM (see TestMain), after starting a background
// `sleep` in the same process group, as vLLM starts worker processes.
// prelude runs first.
func fakeVLLMScript(t *testing.T, prelude string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vllm")
	script := fmt.Sprintf("#!/bin/sh\n%s\nsleep 600 </dev/null >/dev/null 2>&1 &\nVBATCH_FAKE_VLLM=1 exec '%s' \"$@\"\n", prelude, self)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func fastVLLM(cfg VLLMConfig) *VLLM {
	e := NewVLLM(cfg)
	e.backoffMin, e.backoffMax = 20*time.Millisecond, 100*time.Millisecond
	e.startPoll, e.healthPoll = 10*time.Millisecond, 50*time.Millisecond
	return e
}

func TestVLLMSupervisor(t *testing.T) {
	ctx := context.Background()
	logs := &syncBuffer{}
	e := fastVLLM(VLLMConfig{
		Bin:           fakeVLLMScript(t, ""),
		Model:         "org/fake",
		Args:          []string{"--served-model-name", "fake"},
		Logger:        slog.New(slog.NewTextHandler(logs, nil)),
		HealthTimeout: 30 * time.Second,
		StopGrace:     10 * time.Second,
	})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = e.Stop(ctx)
		}
	}()
	if !e.Healthy() || e.PID() == 0 || e.LoadDuration() <= 0 || e.Restarts() != 0 {
		t.Fatalf("after Start: healthy %v pid %d load %v restarts %d", e.Healthy(), e.PID(), e.LoadDuration(), e.Restarts())
	}
	if got := e.Models(); len(got) != 1 || got[0] != "fake" {
		t.Fatalf("Models() = %v", got)
	}
	do := func() {
		t.Helper()
		status, body, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "fake"))
		if err != nil || status != 200 {
			t.Fatalf("Do: %d %s %v", status, body, err)
		}
	}
	do()
	st, err := e.Stats(ctx)
	if err != nil || st.TokensGeneratedTotal != 5 || st.LoadDurationSeconds <= 0 || !st.Loaded {
		t.Fatalf("Stats: %+v %v", st, err)
	}
	// The child is bound to loopback and guarded by the agent's key.
	base := strings.TrimSuffix(e.MetricsURL(), "/metrics")
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(fmt.Sprintf(chatReq, "fake")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("request without the key: %d, want 401", resp.StatusCode)
	}
	// The key is not on the command line, where any local user sees it.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", e.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Split(string(cmdline), "\x00"); slices.Contains(args, "--api-key") || !slices.Contains(args, "127.0.0.1") {
		t.Fatalf("vllm command line %q: want --host 127.0.0.1 and no --api-key", args)
	}

	old := e.PID()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a restarted, healthy vllm", func() bool {
		return e.Restarts() == 1 && e.PID() != old && e.Healthy()
	})
	// SIGKILL is delivered asynchronously.
	waitFor(t, "the killed vllm's process group to be gone", func() bool { return !groupLive(old) })
	do()
	if !strings.Contains(logs.String(), "fake vllm serving fake") || !strings.Contains(logs.String(), "vllm exited; restarting") {
		t.Fatalf("logs lack child output or the restart:\n%s", logs)
	}

	cur := e.PID()
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if e.Healthy() {
		t.Fatal("healthy after Stop")
	}
	waitFor(t, "the stopped vllm's process group to be gone", func() bool { return !groupLive(cur) })
	if err := e.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestVLLMStartFails(t *testing.T) {
	e := fastVLLM(VLLMConfig{Bin: fakeVLLMScript(t, "echo no GPU >&2; exit 3"), Model: "m"})
	err := e.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exited before becoming healthy") {
		t.Fatalf("Start: %v", err)
	}
	if e.Healthy() {
		t.Fatal("healthy after a failed start")
	}
	if err := e.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	e = fastVLLM(VLLMConfig{Bin: filepath.Join(t.TempDir(), "missing"), Model: "m"})
	if err := e.Start(context.Background()); err == nil {
		t.Fatal("Start of a missing binary succeeded")
	}
}

func TestVLLMStartTimesOut(t *testing.T) {
	// A vllm that never answers is killed with its whole group.
	e := fastVLLM(VLLMConfig{Bin: fakeVLLMScript(t, "exec sleep 600"), Model: "m", HealthTimeout: 200 * time.Millisecond})
	err := e.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not healthy after") {
		t.Fatalf("Start: %v", err)
	}
	waitFor(t, "the unhealthy vllm's group to be gone", func() bool { return !groupLive(e.PID()) })
}

// groupLive reports whether group pgid has a process that is not a zombie
// (orphans are reaped by init, which may take its time). Without /proc it
// falls back to groupAlive.
func groupLive(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return groupAlive(pgid)
	}
	for _, ent := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			return true
		}
	}
	return false
}

func TestVLLMRefusesReservedArgs(t *testing.T) {
	for _, args := range [][]string{{"--host", "0.0.0.0"}, {"--port=9000"}, {"--tensor-parallel-size", "2", "--api-key", "x"}} {
		e := NewVLLM(VLLMConfig{Model: "m", Bin: "/bin/false", Args: args})
		if err := e.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "may not be given") {
			t.Errorf("args %q: Start = %v, want a refusal", args, err)
		}
	}
}
