package monitoring

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// lines decodes the JSON lines of buf.
func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// TestHCLogLevelsAndFields checks that hclog calls come out as vbatch's
// slog JSON: slog's level names, msg, logger set to the name, the key/value
// pairs as fields, and none of hclog's "@" keys.
func TestHCLogLevelsAndFields(t *testing.T) {
	var buf bytes.Buffer
	base := NewLogger(&buf, "debug", "coordinator").With("node_id", "c1")
	l := HCLog(base, "raft")
	l.Trace("t")
	l.Debug("d")
	l.Info("i", "term", 3, "node", stringer{})
	l.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "10.0.0.1:8002", "last-leader-id", "c2")
	l.Error("e", "error", errors.New("boom"), "odd")
	l.Log(hclog.Off, "never")
	l.With("peer", "c3").Info("w", "f", hclog.Fmt("%d%%", 50))
	got := lines(t, &buf)
	want := []struct{ level, msg string }{{"DEBUG", "t"}, {"DEBUG", "d"}, {"INFO", "i"}, {"WARN", "heartbeat timeout reached, starting election"}, {"ERROR", "e"}, {"INFO", "w"}}
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i, w := range want {
		m := got[i]
		if m["level"] != w.level || m["msg"] != w.msg || m["logger"] != "raft" || m["node_id"] != "c1" {
			t.Errorf("line %d: %v, want level %s msg %q logger raft node_id c1", i, m, w.level, w.msg)
		}
		for k := range m {
			if strings.HasPrefix(k, "@") {
				t.Errorf("line %d has hclog key %s", i, k)
			}
		}
	}
	if got[2]["term"] != float64(3) || got[2]["node"] != "Node at 10.0.0.1:8002 [Follower]" {
		t.Errorf("info fields: %v", got[2])
	}
	if got[3]["last-leader-id"] != "c2" || got[3]["last-leader-addr"] != "10.0.0.1:8002" {
		t.Errorf("warn fields: %v", got[3])
	}
	if got[4]["error"] != "boom" || got[4]["EXTRA_VALUE_AT_END"] != "odd" {
		t.Errorf("error fields: %v", got[4])
	}
	if got[5]["peer"] != "c3" || got[5]["f"] != "50%" {
		t.Errorf("With/Fmt fields: %v", got[5])
	}
}

// TestHCLogNamedAndLevel checks Named (raft-autopilot calls
// Named("autopilot") on the logger it is given), the level threshold taken
// from the slog logger, and the standard-library writer's prefixes.
func TestHCLogNamedAndLevel(t *testing.T) {
	var buf bytes.Buffer
	base := NewLogger(&buf, "info", "coordinator")
	ap := HCLog(base, "").Named("autopilot")
	ap.Info("promoting server")
	ap.Debug("hidden")
	HCLog(base, "raft").Named("snapshot").Info("s")
	std := HCLog(base, "raft").StandardLogger(nil)
	std.Print("[WARN] raft-net: failed to accept connection")
	got := lines(t, &buf)
	if len(got) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(got), buf.String())
	}
	if got[0]["logger"] != "autopilot" || got[0]["level"] != "INFO" {
		t.Errorf("autopilot line: %v", got[0])
	}
	if got[1]["logger"] != "raft.snapshot" {
		t.Errorf("named line: %v", got[1])
	}
	if got[2]["level"] != "WARN" || got[2]["msg"] != "raft-net: failed to accept connection" {
		t.Errorf("standard logger line: %v", got[2])
	}
	if ap.IsDebug() || !ap.IsInfo() || ap.GetLevel() != hclog.Info {
		t.Errorf("level: debug %v info %v get %v, want info", ap.IsDebug(), ap.IsInfo(), ap.GetLevel())
	}
}

// stringer stands for raft's *Raft, which raft logs as a value: its fields
// are unexported, so only String() says anything.
type stringer struct{ unexported int }

func (stringer) String() string { return "Node at 10.0.0.1:8002 [Follower]" }

// countingStringer counts its String calls; a nil one panics in String.
type countingStringer struct{ n *int }

func (c *countingStringer) String() string { *c.n++; return "counted" }

// TestHCLogDroppedLinesCostNothing: a line under the logger's level is
// dropped before its values are rendered (raft logs much at debug), and a
// typed-nil Stringer value neither panics nor loses the line.
func TestHCLogDroppedLinesCostNothing(t *testing.T) {
	var buf bytes.Buffer
	l := HCLog(NewLogger(&buf, "info", "coordinator"), "raft")
	n := 0
	l.Debug("dropped", "v", &countingStringer{n: &n})
	l.Trace("dropped", "v", &countingStringer{n: &n})
	if n != 0 || buf.Len() != 0 {
		t.Fatalf("a dropped line rendered its values %d times and wrote %q", n, buf.String())
	}
	var nilStringer *countingStringer
	l.Debug("dropped", "v", nilStringer)
	l.Info("kept", "v", nilStringer)
	got := lines(t, &buf)
	if len(got) != 1 || got[0]["v"] != "<nil>" {
		t.Fatalf("typed-nil Stringer: %v", got)
	}
}
