package coordinator

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
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

// TestCloseWithCommandsQueuedForTheFSM: Close while the FSM lags behind
// commits. hashicorp/raft leaves a future unanswered for ever when it
// shuts down with the future's entry still queued for the FSM; a loop
// waiting on one kept Close (and once, a CI run) waiting for ever. Close
// now waits for the loops while raft still runs, and raft waits end when
// the node closes.
func TestCloseWithCommandsQueuedForTheFSM(t *testing.T) {
	for i := range 3 {
		cfg := nodeConfig(t, fmt.Sprintf("slow%d", i), 1, nil)
		cfg.fsmApplyDelay = 100 * time.Millisecond
		c, err := Start(cfg, slog.New(slog.DiscardHandler), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		waitLeader(t, []*Coordinator{c})
		ctx := c.life
		for range 3 {
			c.goLoop(func() {
				for ctx.Err() == nil {
					_, _ = c.applyAsLeader(ctx, &vbatchv1.ExpireLeases{Reason: "test"})
				}
			})
		}
		applied := c.fsm.AppliedIndex()
		waitFor(t, 10*time.Second, "commands applied", func() bool { return c.fsm.AppliedIndex() >= applied+2 })
		closed := make(chan error, 1)
		go func() { closed <- c.Close() }()
		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("Close still running after 30 s:\n%s", buf[:runtime.Stack(buf, true)])
		}
	}
}
