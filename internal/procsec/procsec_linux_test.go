//go:build linux

package procsec

import (
	"os"
	"testing"
)

// TestNoDump: the process becomes non-dumpable and can still read its own
// /proc files (the Prometheus process collector reads /proc/self/fd and
// stat; the agent reads its own environment).
func TestNoDump(t *testing.T) {
	if err := NoDump(); err != nil {
		t.Fatal(err)
	}
	if d, err := dumpable(); err != nil || d {
		t.Fatalf("dumpable after NoDump: %v, %v", d, err)
	}
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Fatalf("own /proc/self/fd unreadable: %v", err)
	}
	for _, f := range []string{"/proc/self/environ", "/proc/self/stat", "/proc/self/limits"} {
		if _, err := os.ReadFile(f); err != nil {
			t.Fatalf("own %s unreadable: %v", f, err)
		}
	}
}
