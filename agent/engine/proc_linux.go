package engine

import "syscall"

// setParentDeathSignal has the kernel kill the child if the agent dies
// without stopping it, so no orphaned vLLM keeps the GPUs. (The signal
// follows the thread that started the child; Go keeps its threads for the
// life of the process unless a goroutine locked to one exits, which this
// package never does.)
func setParentDeathSignal(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGKILL
}
