package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vbatch/vbatch/monitoring"
)

// TestAutopilotRemovesDeadAndPromotesReplacement: a coordinator gone from
// gossip past the grace period is removed from raft; a replacement with an
// empty data dir joins as a non-voter, catches up from a snapshot and is
// promoted once stable. Health and failure tolerance follow, on the leader
// and, over RPC, on followers and in the metrics.
func TestAutopilotRemovesDeadAndPromotesReplacement(t *testing.T) {
	var nodes []*Coordinator
	var join []string
	for i := 1; i <= 3; i++ {
		cfg := nodeConfig(t, fmt.Sprintf("c%d", i), 3, join)
		cfg.DeadServerGrace = time.Second
		// Snapshot often and keep few logs, so the replacement must be
		// sent a snapshot to catch up.
		cfg.RaftSnapshotThreshold, cfg.RaftTrailingLogs = 16, 4
		c := startNode(t, cfg)
		if i == 1 {
			join = []string{c.pool.Addr()}
		}
		nodes = append(nodes, c)
	}
	leader := waitLeader(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	waitFor(t, 15*time.Second, "a healthy cluster tolerating one failure", func() bool {
		h, err := follower(nodes).AutopilotHealth(ctx)
		return err == nil && h.Healthy && h.FailureTolerance == 1 && len(h.Servers) == 3
	})
	if v := leader.autopilotView(); v == nil || !v.Healthy {
		t.Fatalf("autopilot view = %+v", v)
	}

	// Kill a follower: after the grace period autopilot removes it.
	victim := others(nodes, leader)[0]
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the dead coordinator removed", func() bool {
		_, ok := serverIDs(t, leader)[victim.cfg.NodeID]
		return !ok
	})
	// The counter moves once RemoveServer's future returns, a moment
	// after the configuration shows the change.
	waitFor(t, 5*time.Second, "the removal counted", func() bool {
		return testutil.ToFloat64(leader.metrics.AutopilotRemoved) == 1
	})
	for i := range 40 {
		putKey(t, ctx, leader, fmt.Sprintf("key-%d", i))
	}
	if err := leader.raftNode.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for i := 40; i < 50; i++ {
		putKey(t, ctx, leader, fmt.Sprintf("key-%d", i))
	}

	// A replacement with an empty data dir joins and becomes a voter.
	cfg := nodeConfig(t, "c4", 3, []string{leader.pool.Addr()})
	cfg.RaftSnapshotThreshold, cfg.RaftTrailingLogs = 16, 4
	logs := &syncBuffer{}
	c4 := startNodeLogging(t, cfg, logs)
	waitFor(t, 20*time.Second, "the replacement promoted to voter", func() bool {
		return serverIDs(t, leader)["c4"] == raft.Voter
	})
	waitFor(t, 10*time.Second, "the replacement caught up", func() bool { return hasKey(c4, "key-0") && hasKey(c4, "key-49") })
	if !strings.Contains(logs.String(), "snapshot") {
		t.Errorf("replacement did not install a snapshot; raft log:\n%s", logs.String())
	}
	waitFor(t, 15*time.Second, "healthy again with 3 voters", func() bool {
		h, err := c4.AutopilotHealth(ctx)
		return err == nil && h.Healthy && h.FailureTolerance == 1 && len(h.Servers) == 3
	})
}

// startNodeLogging is startNode with the node's log (raft's lines
// included, as logger=raft) written to logOut.
func startNodeLogging(t testing.TB, cfg Config, logOut io.Writer) *Coordinator {
	t.Helper()
	c, err := Start(cfg, monitoring.NewLogger(logOut, "info", "coordinator"), logOut)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestFetchServerStatsConcurrent: the peers' answers and this node's own
// figures fill one map; many rounds (run with -race too) must not write it
// concurrently. A coordinator once died of "concurrent map writes" here
// under CPU load.
func TestFetchServerStatsConcurrent(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes)
	servers := leader.autopilot.KnownServers()
	if len(servers) != 3 {
		t.Fatalf("known servers: %v", servers)
	}
	for range 200 {
		stats := leader.autopilot.FetchServerStats(context.Background(), servers)
		if _, ok := stats[raft.ServerID(leader.cfg.NodeID)]; !ok {
			t.Fatal("no stats for the leader itself")
		}
	}
}
