package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCommitNoticesReachFollowers runs a cluster whose CommitTimeout is a
// minute, so raft alone would tell a follower of a commit only with the
// next write: writes forwarded by a follower, consistent reads on a
// follower and a follower's own state must all see the leader's last write
// at once, through the leader's commit notices.
func TestCommitNoticesReachFollowers(t *testing.T) {
	var nodes []*Coordinator
	var join []string
	for _, id := range []string{"c1", "c2", "c3"} {
		cfg := nodeConfig(t, id, 3, join)
		cfg.Timing.CommitTimeout = time.Minute
		c := startNode(t, cfg)
		if join == nil {
			join = []string{c.pool.Addr()}
		}
		nodes = append(nodes, c)
	}
	leader := waitLeader(t, nodes)
	fols := others(nodes, leader)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A write through a follower returns once that follower applied it.
	putKey(t, ctx, fols[0], "through-follower")
	if !hasKey(fols[0], "through-follower") {
		t.Fatal("the follower that forwarded the write does not have it")
	}
	// A write on the leader reaches both followers' state.
	putKey(t, ctx, leader, "on-leader")
	for _, f := range fols {
		waitFor(t, 10*time.Second, f.cfg.NodeID+" to apply the leader's last write", func() bool { return hasKey(f, "on-leader") })
	}
	// A consistent read on a follower waits for the last command, never
	// for a notice's barrier entry, which the FSM does not see.
	for _, f := range fols {
		readSoon(t, ctx, f)
	}
	if n := testutil.ToFloat64(leader.metrics.CommitNotices); n == 0 {
		t.Fatal("the leader sent no commit notice")
	}
}

func TestLastCommand(t *testing.T) {
	store := raft.NewInmemStore()
	entries := []*raft.Log{
		{Index: 1, Type: raft.LogConfiguration},
		{Index: 2, Type: raft.LogNoop},
		{Index: 3, Type: raft.LogCommand},
		{Index: 4, Type: raft.LogBarrier},
		{Index: 5, Type: raft.LogCommand},
		{Index: 6, Type: raft.LogBarrier},
		{Index: 7, Type: raft.LogConfiguration},
	}
	if err := store.StoreLogs(entries); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		commit, want uint64
		ok           bool
	}{{7, 5, true}, {6, 5, true}, {5, 5, true}, {4, 3, true}, {3, 3, true}, {2, 0, false}, {0, 0, false}} {
		got, ok, err := lastCommand(store, tc.commit)
		if err != nil || got != tc.want || ok != tc.ok {
			t.Errorf("lastCommand(%d) = %d, %v, %v; want %d, %v", tc.commit, got, ok, err, tc.want, tc.ok)
		}
	}
	// Entries compacted away: no command left in the log up to commit.
	if err := store.DeleteRange(1, 5); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := lastCommand(store, 7); err != nil || ok {
		t.Errorf("after compaction lastCommand(7) = %d, %v, %v; want no command", got, ok, err)
	}
}
