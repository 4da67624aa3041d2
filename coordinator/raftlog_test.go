package coordinator

import (
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/monitoring"
)

// TestRaftLogsThroughSlog checks that raft's lines come out of the
// coordinator's slog logger like every other line (level, msg,
// logger=raft, node_id), not as hclog JSON ("@level", "@message") on the
// raw log output, which the log pipeline cannot label.
func TestRaftLogsThroughSlog(t *testing.T) {
	var out syncBuffer
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir = "c1", t.TempDir()
	cfg.HTTPAddr, cfg.RPCAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.BootstrapExpect = 1
	cfg.Timing = testTiming()
	c, err := Start(cfg, monitoring.NewLogger(&out, "info", "coordinator"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	waitLeader(t, []*Coordinator{c})
	// raft logs "entering leader state" as it takes leadership.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var raftLines []map[string]any
		for _, l := range strings.Split(out.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["logger"] == "raft" {
				raftLines = append(raftLines, m)
			}
		}
		for _, m := range raftLines {
			if strings.Contains(m["msg"].(string), "entering leader state") {
				if m["level"] != "INFO" || m["node_id"] != "c1" || m["time"] == nil {
					t.Errorf("raft line %v: want level INFO, node_id c1 and time", m)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no raft line with logger=raft saying \"entering leader state\" in the coordinator's log:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
