package engine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startMarked starts `sleep 1000` in a process group of its own with
// owner's mark in its environment, as a worker left over by an earlier agent
// would be, and returns it with a channel closed once it was waited for. It
// is killed at the end of the test.
func startMarked(t *testing.T, owner string) (*exec.Cmd, chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	cmd.Env = append(os.Environ(), ownerEnv+"="+owner)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd, done
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// killedBySIGKILL reports whether cmd, waited for, died of SIGKILL.
func killedBySIGKILL(cmd *exec.Cmd) bool {
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func TestVLLMKillsLeftovers(t *testing.T) {
	ctx := context.Background()
	owner := t.TempDir()
	stray, strayDone := startMarked(t, owner)
	other, otherDone := startMarked(t, owner+"-other") // another agent's
	logs := &syncBuffer{}
	e := fastVLLM(VLLMConfig{
		Bin:    fakeVLLMScript(t, ""),
		Model:  "m",
		Owner:  owner,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(ctx)

	// Start waited for the leftover to end (a zombie until we reap it).
	if !processGone(stray.Process.Pid) {
		t.Fatalf("leftover %d still runs after Start", stray.Process.Pid)
	}
	waitFor(t, "the leftover to be reaped", func() bool { return closed(strayDone) })
	if !killedBySIGKILL(stray) {
		t.Fatalf("leftover ended with %v, want SIGKILL", stray.ProcessState)
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("msg=\"killed leftover vllm process\" pid=%d ", stray.Process.Pid)) {
		t.Fatalf("the kill is not logged:\n%s", logs)
	}
	if closed(otherDone) || syscall.Kill(other.Process.Pid, 0) != nil {
		t.Fatalf("the process with another owner was killed: %v", other.ProcessState)
	}

	// The child carries the mark, for its workers to inherit.
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", e.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(env, []byte("\x00"+ownerEnv+"="+owner+"\x00")) {
		t.Fatalf("vllm's environment lacks %s=%s", ownerEnv, owner)
	}

	// A restart cleans up too.
	stray2, stray2Done := startMarked(t, owner)
	if err := syscall.Kill(e.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a restart that killed the second leftover", func() bool {
		return closed(stray2Done) && e.Restarts() == 1 && e.Healthy()
	})
	if !killedBySIGKILL(stray2) {
		t.Fatalf("second leftover ended with %v, want SIGKILL", stray2.ProcessState)
	}
	if closed(otherDone) {
		t.Fatal("the process with another owner was killed by the restart")
	}
}

func TestKillOwnedSparesItself(t *testing.T) {
	// The test binary, marked itself, looks for marked processes: it must
	// not find and kill itself.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	owner := t.TempDir()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "VBATCH_TEST_KILL_OWNED="+owner, ownerEnv+"="+owner)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "survived; killed 0, err <nil>") {
		t.Fatalf("killOwned in a marked process: %v, output %q", err, out)
	}
}

func TestWaitGone(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	ctx := context.Background()
	if left := waitGone(ctx, []int{pid}, 20*time.Millisecond); len(left) != 1 || left[0] != pid {
		t.Fatalf("waitGone on a live process: %v, want [%d]", left, pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Not reaped yet: a zombie, which holds nothing, counts as gone.
	if left := waitGone(ctx, []int{pid}, 20*time.Second); len(left) != 0 {
		t.Fatalf("waitGone on a killed process: %v left", left)
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("the zombie was reaped; the test proves nothing")
	}
}

// TestGroupRunningIgnoresZombies: a process group counts as running while
// a live process is in it, and not once only zombies are left, which a
// container without an init may never reap.
func TestGroupRunningIgnoresZombies(t *testing.T) {
	// The leader never waits for its child, which exits at once: a zombie
	// in the group for as long as the leader lives.
	cmd := exec.Command("sh", "-c", "sleep 0.01 & exec sleep 1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	defer func() { _ = syscall.Kill(-pgid, syscall.SIGKILL); _ = cmd.Wait() }()
	if !groupRunning(pgid) {
		t.Fatal("a group with a live leader reads as not running")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for groupRunning(pgid) {
		if time.Now().After(deadline) {
			t.Fatal("group still running once its leader was killed and only its child's zombie can be left")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if groupRunning(0) || groupRunning(-1) {
		t.Fatal("no group reads as running")
	}
}
