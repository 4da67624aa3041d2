package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/ids"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// testTiming is fast enough for tests, yet slow enough that a loaded
// 2-core machine (the e2e build running beside this package) does not
// depose a leader that a test is still using.
func testTiming() Timing {
	return Timing{
		HeartbeatTimeout:    500 * time.Millisecond,
		ElectionTimeout:     500 * time.Millisecond,
		LeaderLeaseTimeout:  300 * time.Millisecond,
		CommitTimeout:       LANTiming().CommitTimeout, // followers rely on commit notices, as in production
		GossipProbeInterval: 200 * time.Millisecond,
		RepairInterval:      200 * time.Millisecond,
		BlobGCGrace:         time.Hour,
		AutopilotInterval:   100 * time.Millisecond,
		// Generous: a loaded test machine delays heartbeats.
		AutopilotLastContact: 2 * time.Second,
	}
}

// startCluster starts n in-process coordinators on loopback ports chosen
// by the OS, each config changed by edits, and waits for a leader and for
// every node to know all n voters.
func startCluster(t testing.TB, n int, edits ...func(*Config)) []*Coordinator {
	t.Helper()
	var nodes []*Coordinator
	var join []string
	for i := 0; i < n; i++ {
		cfg := DefaultConfig()
		cfg.NodeID = fmt.Sprintf("c%d", i+1)
		cfg.DataDir = t.TempDir()
		cfg.HTTPAddr, cfg.RPCAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		cfg.BootstrapExpect = n
		cfg.Join = join
		cfg.Timing = testTiming()
		cfg.ServerStabilizationTime = 300 * time.Millisecond
		for _, edit := range edits {
			edit(&cfg)
		}
		logger := slog.New(slog.NewTextHandler(io.Discard, nil))
		c, err := Start(cfg, logger, io.Discard)
		if err != nil {
			t.Fatalf("start %s: %v", cfg.NodeID, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if i == 0 {
			join = []string{c.pool.Addr()}
		}
		nodes = append(nodes, c)
	}
	waitLeader(t, nodes)
	waitVoters(t, nodes, n)
	return nodes
}

// waitVoters waits until every node's raft configuration holds n voters.
func waitVoters(t testing.TB, nodes []*Coordinator, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, c := range nodes {
		for len(c.voters()) != n {
			if time.Now().After(deadline) {
				t.Fatalf("%s knows %d voters, want %d", c.cfg.NodeID, len(c.voters()), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// waitLeader waits for a leader that has extended the leases of its term,
// so that its own decisions (applyAsLeader) are taken.
func waitLeader(t testing.TB, nodes []*Coordinator) *Coordinator {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, c := range nodes {
			if c.IsLeader() && c.clock.isOpen(c.raftNode.raft.CurrentTerm()) {
				return c
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader elected")
	return nil
}

func follower(nodes []*Coordinator) *Coordinator {
	for _, c := range nodes {
		if !c.IsLeader() {
			return c
		}
	}
	return nil
}

// TestUploadRefusedBeforeBootstrap: a coordinator that knows no voters yet
// cannot tell what a majority is, so it refuses an upload (503) instead of
// acknowledging a blob that only it holds.
func TestUploadRefusedBeforeBootstrap(t *testing.T) {
	c := startNode(t, nodeConfig(t, "lonely", 3, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, replicas, err := c.StoreUpload(ctx, strings.NewReader("line\n"))
	if !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("upload before bootstrap = %v (replicas %v), want unavailable", err, replicas)
	}
	if shas, err := c.blobs.List(); err != nil || len(shas) != 0 {
		t.Fatalf("refused upload left blobs %v (err %v)", shas, err)
	}
}

func TestForwardedWriteIsReadableEverywhere(t *testing.T) {
	nodes := startCluster(t, 3)
	f := follower(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data := []byte(strings.Repeat("line of input\n", 1000))
	ref, replicas, err := f.StoreUpload(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("upload through follower: %v", err)
	}
	if len(replicas) < 2 {
		t.Fatalf("blob on %v, want a majority", replicas)
	}
	id := ids.New("file-")
	if _, err := f.Apply(ctx, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: id, Project: "p", Bytes: ref.Bytes, Sha256: ref.Sha256, CreatedAt: 1, Parts: []*vbatchv1.BlobRef{ref}}}); err != nil {
		t.Fatalf("forwarded apply: %v", err)
	}
	// The proposer reads its own write at once; the others after a
	// consistent read.
	for _, c := range nodes {
		if err := c.ConsistentRead(ctx); err != nil {
			t.Fatalf("%s consistent read: %v", c.cfg.NodeID, err)
		}
		var file *vbatchv1.File
		c.fsm.View(func(s *fsm.State) { file = s.Files[id] })
		if file == nil {
			t.Fatalf("%s does not see the file", c.cfg.NodeID)
		}
		rc, err := c.OpenFile(ctx, file)
		if err != nil {
			t.Fatalf("%s open file: %v", c.cfg.NodeID, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s read %d bytes (err %v), want %d", c.cfg.NodeID, len(got), err, len(data))
		}
	}
	// A rejected command comes back as its sentinel through forwarding.
	_, err = f.Apply(ctx, &vbatchv1.DeleteFile{Id: "file-missing"})
	if !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("forwarded rejection = %v, want not found", err)
	}
}

func TestLeaderFailover(t *testing.T) {
	nodes := startCluster(t, 3)
	old := waitLeader(t, nodes)
	start := time.Now()
	if err := old.Close(); err != nil {
		t.Logf("close old leader: %v", err)
	}
	var rest []*Coordinator
	for _, c := range nodes {
		if c != old {
			rest = append(rest, c)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// A write through a survivor succeeds once the new leader is in place.
	if _, err := rest[0].Apply(ctx, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1"}}); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	t.Logf("first write committed %s after the leader stopped", time.Since(start))
	status, err := rest[1].ClusterStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.Leader == "" || status.Leader == old.cfg.NodeID {
		t.Fatalf("leader after failover = %q", status.Leader)
	}
}

// TestFSMLevelGate checks that a command of a newer FSM level is allowed
// only while every server of the raft configuration advertises that level
// in gossip: not once one advertises an older level, nor while one is gone.
func TestFSMLevelGate(t *testing.T) {
	nodes := startCluster(t, 3)
	allAt := func(level int, want bool, on ...*Coordinator) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			ok := true
			for _, c := range on {
				ok = ok && c.clusterAtFSMLevel(level) == want
			}
			if ok {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("clusterAtFSMLevel(%d) did not become %v", level, want)
	}
	allAt(fsm.LevelCompletePart, true, nodes...)
	if nodes[0].clusterAtFSMLevel(fsm.Level + 1) {
		t.Fatal("a level no server applies is allowed")
	}
	// c3 now says it runs an older build.
	self, ok := nodes[2].pool.Member(nodes[2].cfg.NodeID)
	if !ok {
		t.Fatal("c3 does not list itself")
	}
	meta := self.Meta
	meta.FSM = 0
	if err := nodes[2].pool.UpdateMeta(meta); err != nil {
		t.Fatal(err)
	}
	allAt(fsm.LevelCompletePart, false, nodes[0], nodes[1])
	meta.FSM = fsm.Level
	if err := nodes[2].pool.UpdateMeta(meta); err != nil {
		t.Fatal(err)
	}
	allAt(fsm.LevelCompletePart, true, nodes[0], nodes[1])
	// A server gossip no longer lists may come back with any build.
	if err := nodes[2].Close(); err != nil {
		t.Fatal(err)
	}
	allAt(fsm.LevelCompletePart, false, nodes[0], nodes[1])
}

// TestNonVoterUploadNeedsMajorityOfVoters: a coordinator that is not (yet)
// a voter may disappear with its copy, so an upload through it is
// acknowledged only once a majority of the voters hold the blob besides it.
func TestNonVoterUploadNeedsMajorityOfVoters(t *testing.T) {
	// A joining node stays a non-voter.
	nodes := startCluster(t, 3, func(c *Config) { c.ServerStabilizationTime = time.Hour })
	cfg := nodeConfig(t, "staging", 3, []string{nodes[0].pool.Addr()})
	cfg.ServerStabilizationTime = time.Hour
	staging := startNode(t, cfg)
	waitFor(t, 20*time.Second, "the new coordinator to hold the configuration as a non-voter", func() bool {
		f := staging.raftNode.raft.GetConfiguration()
		if f.Error() != nil {
			return false
		}
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == "staging" {
				return s.Suffrage == raft.Nonvoter && len(staging.voters()) == 3
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, replicas, err := staging.StoreUpload(ctx, strings.NewReader("uploaded through a non-voter\n"))
	if err != nil {
		t.Fatalf("upload through the non-voter: %v", err)
	}
	voters := 0
	for _, id := range replicas {
		if staging.isVoter(id) {
			voters++
		}
	}
	if voters < 2 {
		t.Fatalf("acknowledged with replicas %v: %d voters, want a majority (2)", replicas, voters)
	}
}
