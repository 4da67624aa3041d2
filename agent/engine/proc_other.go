//go:build unix && !linux

package engine

import "syscall"

// setParentDeathSignal does nothing where the kernel has no such feature.
func setParentDeathSignal(*syscall.SysProcAttr) {}
