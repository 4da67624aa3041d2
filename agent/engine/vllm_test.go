//go:build unix

package engine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	if e.HangKills() != 0 {
		t.Fatalf("a crash counted as %d hang kills", e.HangKills())
	}
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

func TestVLLMHangWatchdog(t *testing.T) {
	cases := []struct {
		name  string
		sig   syscall.Signal
		grace time.Duration
		// killed: the hung child ignores SIGTERM, so the watchdog needs
		// SIGKILL after the grace period.
		killed bool
	}{
		{"health answers 503", syscall.SIGUSR2, 20 * time.Second, false},
		{"no answer at all", syscall.SIGSTOP, 100 * time.Millisecond, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			logs := &syncBuffer{}
			e := fastVLLM(VLLMConfig{
				Bin:         fakeVLLMScript(t, ""),
				Model:       "m",
				Logger:      slog.New(slog.NewTextHandler(logs, nil)),
				HangTimeout: 300 * time.Millisecond,
				StopGrace:   c.grace,
			})
			e.probeTimeout = 200 * time.Millisecond
			if err := e.Start(ctx); err != nil {
				t.Fatal(err)
			}
			defer e.Stop(ctx)
			old := e.PID()
			if err := syscall.Kill(old, c.sig); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the hung vllm to be replaced by a healthy one", func() bool {
				return e.HangKills() == 1 && e.Restarts() == 1 && e.PID() != old && e.Healthy()
			})
			waitFor(t, "the hung vllm's process group to be gone", func() bool { return !groupLive(old) })
			if status, body, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "m")); err != nil || status != 200 {
				t.Fatalf("Do after the restart: %d %s %v", status, body, err)
			}
			out := logs.String()
			if !strings.Contains(out, "vllm hung") {
				t.Fatalf("no hang warning in the logs:\n%s", out)
			}
			if got := strings.Contains(out, "did not stop in time"); got != c.killed {
				t.Fatalf("SIGKILL after the grace period: %v, want %v; logs:\n%s", got, c.killed, out)
			}
		})
	}
}

func TestVLLMDoNoticesCrash(t *testing.T) {
	// The child stops serving but lives on, and the health poll is too
	// slow to matter: only the failed request can tell.
	ctx := context.Background()
	e := fastVLLM(VLLMConfig{Bin: fakeVLLMScript(t, ""), Model: "m"})
	e.healthPoll = time.Hour
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(ctx)
	if err := syscall.Kill(e.PID(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	var err error
	waitFor(t, "a request to fail", func() bool {
		_, _, err = e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "m"))
		return err != nil
	})
	if e.Healthy() {
		t.Fatalf("healthy right after a request failed with %v", err)
	}
}

func TestVLLMDoProbesOneAtATime(t *testing.T) {
	var calls, inflight, maxInflight atomic.Int32
	release, end := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			// A connection reset: the server died under the request.
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		calls.Add(1)
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for m := maxInflight.Load(); n > m && !maxInflight.CompareAndSwap(m, n); m = maxInflight.Load() {
		}
		select { // held until the test lets it answer
		case <-release:
		case <-end:
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	defer close(end)
	e := NewVLLM(VLLMConfig{Model: "m"})
	e.errProbeTimeout = time.Minute // the probe lasts until released
	e.up.set(srv.URL, "")
	e.setHealthy(true)
	ctx := context.Background()
	failingDo := func(ctx context.Context) {
		if _, _, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "m")); err == nil {
			t.Error("Do against a dying server succeeded")
		}
	}

	// 64 requests fail at once: one probes, the others wait for its
	// answer, and every one of them returns to a caller that reads the
	// health after the failure.
	const n = 64
	var returned, sawHealthy atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			failingDo(ctx)
			if e.Healthy() {
				sawHealthy.Add(1)
			}
			returned.Add(1)
		})
	}
	waitFor(t, "the probe, with every other failed request waiting for it", func() bool {
		return calls.Load() == 1 && e.probe.waiters.Load() == n-1
	})
	if r := returned.Load(); r != 0 {
		t.Fatalf("%d failed requests returned before the probe answered", r)
	}
	release <- struct{}{}
	wg.Wait()
	if calls.Load() != 1 || maxInflight.Load() != 1 {
		t.Fatalf("%d probes, %d at once; want 1", calls.Load(), maxInflight.Load())
	}
	if e.Healthy() || sawHealthy.Load() != 0 {
		t.Fatalf("healthy after the probe got 503 (%d callers saw healthy)", sawHealthy.Load())
	}

	// A request whose caller gave up says nothing about the engine.
	e.setHealthy(true)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	failingDo(cctx)
	if calls.Load() != 1 || !e.Healthy() {
		t.Fatalf("a canceled request probed (%d probes) or changed health (%v)", calls.Load(), e.Healthy())
	}

	// The next failure probes again; a finding of the supervisor made
	// while the probe runs wins over the probe's older answer.
	done := make(chan struct{})
	go func() {
		defer close(done)
		failingDo(ctx)
	}()
	waitFor(t, "the second probe", func() bool { return calls.Load() == 2 })
	e.setHealthy(true)
	release <- struct{}{}
	<-done
	if !e.Healthy() {
		t.Fatal("a probe older than the supervisor's finding overrode it")
	}
}
