//go:build !linux

package engine

// killOwned does nothing: finding processes by their environment needs
// Linux's /proc.
func killOwned(string) ([]leftover, error) { return nil, nil }

// processGone is never asked where killOwned kills nothing.
func processGone(int) bool { return true }

// groupRunning reports whether any process of group pgid is left; without
// /proc zombies count too.
func groupRunning(pgid int) bool { return groupAlive(pgid) }
