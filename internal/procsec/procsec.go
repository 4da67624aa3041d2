// Package procsec hardens the vbatch process itself.
package procsec

// NoDump makes this process non-dumpable where the OS allows it: its
// /proc/PID files (environ, mem, fd, ...) become readable by root only, so
// another process of the same user — an engine the agent starts, running
// model code — cannot read the environment this process was started with
// (VBATCH_ROOT_KEY, SENTRY_DSN, ...) or its memory, and no core dump is
// written. The process itself and root keep full access; a child it starts
// is dumpable again after exec.
func NoDump() error { return noDump() }
