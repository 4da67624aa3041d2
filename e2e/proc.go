// Package e2e holds end-to-end tests that run the real vbatch binaries:
// coordinators, agents and simulator engines as separate processes on
// loopback. This file and cluster.go are the harness.
package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is one process a test started. Tests stop every Proc they start,
// by pid, through t.Cleanup.
type Proc struct {
	Name    string
	Args    []string
	LogPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartProc starts bin with args, logging to dir/name.log (appended across
// restarts). The process is killed when the test ends.
func StartProc(t testing.TB, dir, name, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: name, Args: append([]string{bin}, args...), LogPath: filepath.Join(dir, name+".log")}
	if err := p.start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	return p
}

func (p *Proc) start() error {
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	return nil
}

// PID is the running process's pid (0 when stopped).
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	pid := p.PID()
	if pid == 0 {
		return fmt.Errorf("%s not running", p.Name)
	}
	return syscall.Kill(-pid, sig)
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
}

// Stop sends SIGTERM (SIGCONT first, in case it is stopped), waits up to
// grace, then SIGKILLs.
func (p *Proc) Stop(grace time.Duration) {
	if p.PID() == 0 {
		return
	}
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	if !p.wait(grace) {
		_ = p.Signal(syscall.SIGKILL)
		p.wait(10 * time.Second)
	}
}

// Restart starts the process again with the same arguments.
func (p *Proc) Restart(t testing.TB) {
	t.Helper()
	if p.PID() != 0 {
		t.Fatalf("restart %s: still running", p.Name)
	}
	if err := p.start(); err != nil {
		t.Fatalf("restart %s: %v", p.Name, err)
	}
}

func (p *Proc) wait(d time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		p.mu.Lock()
		p.cmd = nil
		p.mu.Unlock()
		return true
	case <-time.After(d):
		return false
	}
}

// Log returns what the process wrote so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// LogTail returns the last n lines the process wrote.
func (p *Proc) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// FreePorts reserves n distinct loopback ports, each free for TCP and UDP
// at the time of the call.
//
// They are drawn below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), not chosen by listening on port 0: a
// process the tests kill and restart on the same ports would otherwise
// race every outgoing connection on the machine, which may take its port
// as a source port while it is down and keep it, so that the restart
// fails with "address already in use".
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	lo, hi := 10000, ephemeralLow()-1
	var ports []int
	var hold []net.Listener
	defer func() {
		for _, l := range hold {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000*n {
			t.Fatalf("no free loopback port in [%d,%d] after %d tries", lo, hi, tries)
		}
		port := lo + rand.IntN(hi-lo+1)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			l.Close()
			continue
		}
		u.Close()
		hold = append(hold, l)
		ports = append(ports, port)
	}
	return ports
}

// ephemeralLow is the first port of the kernel's ephemeral range, or
// 32768 when it cannot be read (or leaves too little room below it).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil || low < 20000 {
		return 32768
	}
	return low
}

// WaitFor polls cond until it returns true or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// buildOnce builds the binaries for the whole test run.
var (
	buildMu  sync.Mutex
	builtDir string
)

// Binaries builds cmd/vbatch and cmd/vbctl once per test binary run and
// returns the directory holding them. VBATCH_BIN_DIR overrides the build.
func Binaries(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("VBATCH_BIN_DIR"); d != "" {
		return d
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if builtDir != "" {
		return builtDir
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	dir, err := os.MkdirTemp("", "vbatch-e2e-bin-")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vbatch", "vbctl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./cmd/"+name)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, strings.TrimSpace(out.String()))
		}
	}
	builtDir = dir
	return dir
}
