package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// killOwned sends SIGKILL to every process of the agent's user, other than
// the agent itself, whose environment holds ownerEnv=owner exactly, and
// returns those it killed. Processes that end meanwhile are skipped.
func killOwned(owner string) ([]leftover, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	mark := []byte(ownerEnv + "=" + owner)
	uid, self := os.Getuid(), os.Getpid()
	var killed []leftover
	var errs []error
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self || !marked(pid, uid, mark) {
			continue
		}
		comm := procComm(pid)
		ok, err := killMarked(pid, uid, mark)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			killed = append(killed, leftover{pid: pid, comm: comm})
		}
	}
	return killed, errors.Join(errs...)
}

// killMarked sends SIGKILL to pid if it still is a marked process: through
// a pidfd, which keeps the process found from being swapped for a new one
// under the same pid between the check and the signal. Kernels before 5.3
// (or sandboxes) without pidfd_open get a plain kill. It reports whether it
// sent the signal.
func killMarked(pid, uid int, mark []byte) (bool, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return false, nil
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
		return sentKill(pid, unix.Kill(pid, unix.SIGKILL))
	case err != nil:
		return false, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if !marked(pid, uid, mark) {
		return false, nil // the pid is another process by now
	}
	return sentKill(pid, unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0))
}

// sentKill interprets the result of sending SIGKILL to pid: a process
// that is gone already is no error.
func sentKill(pid int, err error) (bool, error) {
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ESRCH):
		return false, nil
	default:
		return false, fmt.Errorf("kill leftover vllm process %d: %w", pid, err)
	}
}

// marked reports whether process pid runs as the real user uid and its
// environment holds mark as one whole entry. Processes that cannot be read
// (another user's, or gone) are not marked.
func marked(pid, uid int, mark []byte) bool {
	if procUID(pid) != uid {
		return false
	}
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if bytes.Equal(kv, mark) {
			return true
		}
	}
	return false
}

// procUID returns the real user id of process pid, -1 when unknown.
func procUID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				if uid, err := strconv.Atoi(f[0]); err == nil {
					return uid
				}
			}
		}
	}
	return -1
}

// procComm returns the command name of process pid, "" when unknown.
func procComm(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procStat reads the state letter and process group of pid from
// /proc/PID/stat ("pid (comm) state ppid pgrp ..."; comm may hold spaces
// and parentheses). The error wraps os.ErrNotExist for a pid that is gone.
func procStat(pid int) (state byte, pgrp int, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 3 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	pgrp, err = strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: process group: %w", pid, err)
	}
	return f[0][0], pgrp, nil
}

// dead reports whether a state letter is a zombie's or a dead process's.
func dead(state byte) bool { return state == 'Z' || state == 'X' }

// processGone reports whether pid no longer runs: it does not exist, or is
// a zombie whose parent has not collected it yet.
func processGone(pid int) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	state, _, err := procStat(pid)
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	return dead(state)
}

// groupRunning reports whether any process of group pgid still runs:
// zombies (dead, holding nothing, waiting for a parent that may never reap
// them, as in a container without an init) do not count.
func groupRunning(pgid int) bool {
	if pgid <= 0 || !groupAlive(pgid) {
		return false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true // kill(2) found the group; /proc cannot say more
	}
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		if state, g, err := procStat(pid); err == nil && g == pgid && !dead(state) {
			return true
		}
	}
	return false
}
