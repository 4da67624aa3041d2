package monitoring

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotatingWriterRotatesAndKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "coordinator.log")
	w, err := NewRotatingWriter(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("x", 39) + "\n") // 40 bytes: two fit per file
	for i := range 9 {
		line[0] = byte('a' + i)
		if _, err := w.Write(line); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return string(b)
	}
	// 9 lines, 2 per file: live holds i, .1 holds g h, .2 holds e f; a b c d are gone.
	firsts := func(s string) string {
		var out []byte
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			out = append(out, l[0])
		}
		return string(out)
	}
	if got := firsts(read(path)); got != "i" {
		t.Errorf("live file holds %q, want i", got)
	}
	if got := firsts(read(path + ".1")); got != "gh" {
		t.Errorf(".1 holds %q, want gh", got)
	}
	if got := firsts(read(path + ".2")); got != "ef" {
		t.Errorf(".2 holds %q, want ef", got)
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf(".3 exists past keep=2: %v", err)
	}
	if _, err := w.Write(line); err == nil {
		t.Error("write after Close succeeded")
	}
}

func TestRotatingWriterAppendsAndReopens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	if err := os.WriteFile(path, []byte("old\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	w, err := NewRotatingWriter(path, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("new\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "old\nnew\n" {
		t.Fatalf("file = %q, want appended", b)
	}
	// logrotate moved the file away: Reopen starts a fresh one at path.
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := w.Reopen(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "after\n" {
		t.Fatalf("reopened file = %q", b)
	}
}

func TestLoggerAddsContextIDs(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "info", "coordinator")
	ctx := WithBatchID(WithRequestID(context.Background(), "req_1"), "batch_1")
	log.InfoContext(ctx, "hello")
	log.InfoContext(ctx, "explicit", "request_id", "req_2")
	log.Info("plain")
	LoggerFrom(ctx, log).Info("from")

	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 4 {
		t.Fatalf("got %d lines", len(lines))
	}
	want := []struct{ req, batch any }{{"req_1", "batch_1"}, {"req_2", "batch_1"}, {nil, nil}, {"req_1", "batch_1"}}
	for i, w := range want {
		if lines[i]["request_id"] != w.req || lines[i]["batch_id"] != w.batch || lines[i]["logger"] != "coordinator" {
			t.Errorf("line %d = %v, want request_id %v batch_id %v", i, lines[i], w.req, w.batch)
		}
	}
	if bytes.Count(buf.Bytes(), []byte(`"request_id"`)) != 3 {
		t.Errorf("request_id duplicated in a line:\n%s", buf.String())
	}

	// A sub-logger renames the component: one logger key per line.
	buf.Reset()
	log.With("logger", "api", "node", "c1").With("logger", "api2").Info("sub")
	log.WithGroup("g").Info("grouped", "logger", "inner")
	out := buf.String()
	if strings.Count(out, `"logger"`) != 3 || !strings.Contains(out, `"logger":"api2","node":"c1"`) && !strings.Contains(out, `"node":"c1","logger":"api2"`) {
		t.Errorf("logger renaming:\n%s", out)
	}
	if !strings.Contains(out, `"logger":"coordinator","g":{"logger":"inner"}`) {
		t.Errorf("grouped logger:\n%s", out)
	}
}
