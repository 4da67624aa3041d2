package systemd

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the repository root, relative to this package's directory
// (where go test runs).
const repoRoot = "../.."

// unitFile is a parsed systemd unit: section → key → values in order (a
// key may repeat, e.g. SystemCallFilter=).
type unitFile map[string]map[string][]string

// parseUnit reads a unit file the way systemd splits it: comments start
// with # or ;, a trailing backslash continues a line.
func parseUnit(data []byte) (unitFile, error) {
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	lineNo := 0
	var cont string
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is not a key=value in a section", lineNo, line)
		}
		key = strings.TrimSpace(key)
		u[section][key] = append(u[section][key], strings.TrimSpace(val))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read unit: %w", err)
	}
	return u, nil
}

// last is the effective value of a single-valued key ("" when unset).
func (u unitFile) last(section, key string) string {
	vals := u[section][key]
	if len(vals) == 0 {
		return ""
	}
	return vals[len(vals)-1]
}

// has reports whether key is set in section.
func (u unitFile) has(section, key string) bool { return len(u[section][key]) > 0 }

// words splits every value of a list-valued key into its words.
func (u unitFile) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// loadUnit reads and parses one of this package's unit files.
func loadUnit(t *testing.T, name string) unitFile {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return u
}

// writeStub writes an executable shell script that exits 0.
func writeStub(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// vbatchBinary builds cmd/vbatch once per test run and returns its path;
// VBATCH_BIN_DIR names a directory with a prebuilt one instead.
func vbatchBinary(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("VBATCH_BIN_DIR"); d != "" {
		return filepath.Join(d, "vbatch")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "vbatch-systemd-test-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "vbatch"), "./cmd/vbatch")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/vbatch: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "vbatch")
}

// TestMain removes the binary vbatchBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}
