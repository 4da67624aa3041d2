package coordinator

import (
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
)

// TestConfigLeaseTTLBounds: a lease TTL the FSM would refuse (past
// fsm.MaxLeaseTTL) is refused at start rather than stopping every grant.
func TestConfigLeaseTTLBounds(t *testing.T) {
	for _, tc := range []struct {
		ttl time.Duration
		ok  bool
	}{{time.Second, true}, {fsm.MaxLeaseTTL, true}, {fsm.MaxLeaseTTL + time.Second, false}, {500 * time.Millisecond, false}} {
		cfg := DefaultConfig()
		cfg.NodeID, cfg.DataDir, cfg.BootstrapExpect = "c1", t.TempDir(), 1
		cfg.HTTPAddr = "127.0.0.1:0"
		cfg.LeaseTTL = tc.ttl
		if err := cfg.Check(); (err == nil) != tc.ok {
			t.Errorf("lease TTL %s: Check() = %v, want ok %v", tc.ttl, err, tc.ok)
		}
	}
}
