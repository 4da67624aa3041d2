package dirlock

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestLockIsExclusiveAndReleased(t *testing.T) {
	dir := t.TempDir() + "/sub"
	unlock, err := Lock(dir, "x.lock")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dir + "/x.lock"); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q (%v), want this pid", b, err)
	}
	// flock locks belong to the open file: a second open in this process
	// conflicts as another process's would.
	if _, err := Lock(dir, "x.lock"); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v, want ErrLocked naming the holder", err)
	}
	unlock()
	unlock2, err := Lock(dir, "x.lock")
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

// TestLockHeldByAnotherProcess: a lock another process holds refuses, and
// is free again once that process is killed (the kernel drops it).
func TestLockHeldByAnotherProcess(t *testing.T) {
	if dir := os.Getenv("DIRLOCK_HOLD"); dir != "" {
		if _, err := Lock(dir, "x.lock"); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("locked\n")
		select {} // held until killed
	}
	dir := t.TempDir()
	holder := exec.Command(os.Args[0], "-test.run=^TestLockHeldByAnotherProcess$")
	holder.Env = append(os.Environ(), "DIRLOCK_HOLD="+dir)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Process.Kill(); _ = holder.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("holder said %q (%v)", line, err)
	}
	if _, err := Lock(dir, "x.lock"); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(holder.Process.Pid)) {
		t.Fatalf("lock held by pid %d: %v, want ErrLocked naming it", holder.Process.Pid, err)
	}
	_ = holder.Process.Kill()
	_ = holder.Wait()
	unlock, err := Lock(dir, "x.lock")
	if err != nil {
		t.Fatalf("lock after the holder died: %v", err)
	}
	unlock()
}
