package engine

import (
	"context"
	"time"
)

// leftover is a process killed because it carried the engine's owner mark.
type leftover struct {
	pid  int
	comm string // its command name, for the log
}

// killLeftovers kills the processes of an earlier run of this agent's vLLM
// that are still alive (see VLLMConfig.Owner) and waits until they are
// gone, for at most strayWait or until ctx ends. It runs before every start,
// when the engine has no child of its own, so every marked process is a
// leftover. Failures are logged, not returned: a start that finds the GPUs
// still taken fails and is retried like any other.
func (e *VLLM) killLeftovers(ctx context.Context) {
	if e.cfg.Owner == "" {
		return
	}
	killed, err := killOwned(e.cfg.Owner)
	if err != nil {
		e.log.Warn("kill leftover vllm processes", "owner", e.cfg.Owner, "err", err)
	}
	if len(killed) == 0 {
		return
	}
	pids := make([]int, len(killed))
	for i, k := range killed {
		pids[i] = k.pid
		e.log.Warn("killed leftover vllm process", "pid", k.pid, "cmd", k.comm, "owner", e.cfg.Owner)
	}
	if left := waitGone(ctx, pids, e.strayWait); len(left) > 0 {
		e.log.Warn("leftover vllm processes still alive after SIGKILL", "pids", left, "waited", e.strayWait.String())
	}
}

// waitGone polls until every process of pids is gone (or a zombie, which
// holds no memory), timeout passes or ctx ends, and returns those left.
func waitGone(ctx context.Context, pids []int, timeout time.Duration) []int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		var left []int
		for _, pid := range pids {
			if !processGone(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return left
		case <-t.C:
		}
		pids = left
	}
}
