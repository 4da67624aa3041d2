package coordinator

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/monitoring"
)

// TestAuditRecordedAtLogLevelWarn: without --audit-log, audit records go
// to the main log's output whatever --log-level says, in the main log's
// JSON format with logger "audit".
func TestAuditRecordedAtLogLevelWarn(t *testing.T) {
	out := &syncBuffer{}
	cfg := nodeConfig(t, "c1", 1, nil)
	cfg.RootKey = "test-root-key"
	c, err := Start(cfg, monitoring.NewLogger(out, "warn", "coordinator"), out)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	waitLeader(t, []*Coordinator{c})

	url := "http://" + c.HTTPAddr() + "/v1/admin/keys"
	waitFor(t, 10*time.Second, "an admin key created", func() bool {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"scopes":["read"]}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+cfg.RootKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusCreated
	})

	var audit map[string]any
	waitFor(t, 5*time.Second, "the audit record in the main log", func() bool {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "audit" {
				audit = rec
				return true
			}
		}
		return false
	})
	if audit["logger"] != "audit" || audit["node_id"] != "c1" || audit["level"] != "INFO" || audit["time"] == nil {
		t.Fatalf("audit record %v: want logger audit, node_id c1, level INFO and a time", audit)
	}
	// The main logger keeps its level: nothing it wrote is below WARN.
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["logger"] == "coordinator" && (rec["level"] == "INFO" || rec["level"] == "DEBUG") {
			t.Fatalf("main log wrote below its level: %s", sc.Text())
		}
	}
}
