package coordinator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
)

// TestRemoveAgent: removing an agent alive in gossip is refused (it would
// register again at its next call) and leaves it registered; once it has
// left gossip (stopped, the end of retiring it) the removal forgets it, and
// a second removal finds nothing.
func TestRemoveAgent(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := joinFakeAgent(t, leader, "gpu-7", "127.0.0.1:1")
	registered := func() bool {
		var ok bool
		leader.fsm.View(func(s *fsm.State) { _, ok = s.Agents["gpu-7"] })
		return ok
	}

	err := leader.RemoveAgent(ctx, "gpu-7")
	if !errors.Is(err, fsm.ErrConflict) {
		t.Fatalf("removing a live agent: %v, want a conflict", err)
	}
	if !registered() {
		t.Fatal("a refused removal forgot the agent")
	}

	if err := pool.Leave(time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	waitFor(t, 10*time.Second, "gossip to drop the stopped agent", func() bool {
		_, ok := leader.pool.Member("gpu-7")
		return !ok
	})
	if err := leader.RemoveAgent(ctx, "gpu-7"); err != nil {
		t.Fatalf("removing a stopped agent: %v", err)
	}
	if registered() {
		t.Fatal("the removed agent is still registered")
	}
	if err := leader.RemoveAgent(ctx, "gpu-7"); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("removing it again: %v, want not found", err)
	}
}
