//go:build unix

package engine

import (
	"errors"
	"os/exec"
	"syscall"
)

// setProcessGroup makes the child lead a process group of its own, so
// signalGroup reaches every process vLLM starts (its engine cores and
// workers hold the GPU memory).
func setProcessGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	setParentDeathSignal(cmd.SysProcAttr)
}

// signalGroup sends sig to the process group pgid. A group that is gone
// already is not an error.
func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 0 {
		return nil
	}
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// groupAlive reports whether any process of group pgid is left.
func groupAlive(pgid int) bool {
	if pgid <= 0 {
		return false
	}
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

const (
	sigTerm = syscall.SIGTERM
	sigKill = syscall.SIGKILL
)
