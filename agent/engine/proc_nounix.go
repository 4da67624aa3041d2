//go:build !unix

package engine

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup does nothing where there are no process groups.
func setProcessGroup(*exec.Cmd) {}

// signalGroup kills the process itself: without process groups its
// children cannot be reached, and there is no SIGTERM to send.
func signalGroup(pid int, _ syscall.Signal) error {
	if pid <= 0 {
		return nil
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil
	}
	_ = p.Kill()
	return nil
}

// groupAlive cannot tell; it reports false.
func groupAlive(int) bool { return false }

const (
	sigTerm = syscall.SIGTERM
	sigKill = syscall.SIGKILL
)
