package coordinator

import (
	"net"
	"testing"
	"time"
)

// TestCloseHandsOffLeadership: closing the leader hands leadership over
// before Close drains the servers (up to 5 s while clients hold
// connections), so writes stall for a hand-over, not for the drain and an
// election timeout after it.
func TestCloseHandsOffLeadership(t *testing.T) {
	nodes := startCluster(t, 3)
	old := waitLeader(t, nodes)
	var rest []*Coordinator
	for _, c := range nodes {
		if c != old {
			rest = append(rest, c)
		}
	}
	// A client in the middle of a request keeps the API server busy, as
	// lease long-polls do, so Close drains for its full 5 s.
	conn, err := net.Dial("tcp", old.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /health HTTP/1.1\r\nHost: test\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		if err := old.Close(); err != nil {
			t.Logf("close old leader: %v", err)
		}
	}()
	defer func() { <-closed }()
	waitFor(t, 20*time.Second, "a new leader", func() bool {
		return rest[0].IsLeader() || rest[1].IsLeader()
	})
	elected := time.Since(start)
	select {
	case <-closed:
		t.Fatalf("the new leader came %s after Close started, only after the old leader had shut down", elected)
	default:
	}
	t.Logf("new leader %s after Close started", elected)
}
