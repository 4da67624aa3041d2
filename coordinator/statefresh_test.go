package coordinator

import (
	"errors"
	"testing"
	"time"

	"github.com/vbatch/vbatch/coordinator/api"
)

// TestStateFreshOnlyInContact: a follower trusts its copy of the state
// (API keys) while it hears from the leader; cut off from the cluster, it
// stops within the bound, so a key revoked meanwhile is not accepted.
func TestStateFreshOnlyInContact(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	f := follower(nodes)
	waitFor(t, 10*time.Second, "the follower to hear from the leader", func() bool { return f.StateFresh() == nil })
	if err := leader.StateFresh(); err != nil {
		t.Fatalf("leader: %v", err)
	}
	for _, c := range nodes {
		if c != f {
			if err := c.Close(); err != nil {
				t.Logf("close %s: %v", c.cfg.NodeID, err)
			}
		}
	}
	start := time.Now()
	waitFor(t, 20*time.Second, "the cut-off follower to stop trusting its state", func() bool { return f.StateFresh() != nil })
	if err := f.StateFresh(); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("StateFresh = %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took < f.keyFreshness()/2 {
		t.Fatalf("stopped trusting its state after %v: too soon for the bound", took)
	}
}
