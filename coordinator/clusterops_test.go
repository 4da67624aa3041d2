package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// nodeConfig is a test coordinator's config on loopback ports from the OS.
func nodeConfig(t testing.TB, id string, expect int, join []string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr, cfg.RPCAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.BootstrapExpect = expect
	cfg.Join = join
	cfg.Timing = testTiming()
	cfg.ServerStabilizationTime = 300 * time.Millisecond
	return cfg
}

// startNode starts one coordinator and closes it when the test ends.
func startNode(t testing.TB, cfg Config) *Coordinator {
	t.Helper()
	c, err := Start(cfg, slog.New(slog.DiscardHandler), io.Discard)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// restartNode closes c and starts it again on the same data dir and raft
// address (peers know it by that address), as a process restart would.
func restartNode(t testing.TB, c *Coordinator) *Coordinator {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Logf("close %s: %v", c.cfg.NodeID, err)
	}
	cfg := c.cfg
	cfg.RaftAddr = c.raftNode.advertise
	cfg.Join = nil
	return startNode(t, cfg)
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serverIDs lists the servers of c's raft configuration.
func serverIDs(t testing.TB, c *Coordinator) map[string]raft.ServerSuffrage {
	t.Helper()
	f := c.raftNode.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatalf("%s configuration: %v", c.cfg.NodeID, err)
	}
	out := map[string]raft.ServerSuffrage{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = s.Suffrage
	}
	return out
}

// putKey writes an API key through c.
func putKey(t testing.TB, ctx context.Context, c *Coordinator, id string) {
	t.Helper()
	k := &vbatchv1.APIKey{Id: id, Project: "p", Hash: []byte("h-" + id)}
	if _, err := c.Apply(ctx, &vbatchv1.CreateAPIKey{Key: k}); err != nil {
		t.Fatalf("write key %s through %s: %v", id, c.cfg.NodeID, err)
	}
}

// readSoon fails unless a consistent read on c returns within 3 seconds.
func readSoon(t testing.TB, ctx context.Context, c *Coordinator) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.ConsistentRead(ctx); err != nil {
		t.Fatalf("%s consistent read: %v", c.cfg.NodeID, err)
	}
}

func hasKey(c *Coordinator, id string) bool {
	var ok bool
	c.fsm.View(func(s *fsm.State) { _, ok = s.APIKeys[id] })
	return ok
}

func others(nodes []*Coordinator, not ...*Coordinator) []*Coordinator {
	var out []*Coordinator
next:
	for _, c := range nodes {
		for _, n := range not {
			if c == n {
				continue next
			}
		}
		out = append(out, c)
	}
	return out
}

func TestTransferLeadership(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old := waitLeader(t, nodes)
	rest := others(nodes, old)
	via, target := rest[0], rest[1]

	// Through a follower, to a named voter.
	got, err := via.TransferLeadership(ctx, target.cfg.NodeID)
	if err != nil {
		t.Fatalf("transfer to %s: %v", target.cfg.NodeID, err)
	}
	if got != target.cfg.NodeID {
		t.Fatalf("new leader = %q, want %s", got, target.cfg.NodeID)
	}
	waitFor(t, 5*time.Second, "target to lead", target.IsLeader)

	// On the leader, to whichever voter raft picks.
	got, err = target.TransferLeadership(ctx, "")
	if err != nil {
		t.Fatalf("transfer to any: %v", err)
	}
	if got == "" || got == target.cfg.NodeID {
		t.Fatalf("new leader = %q, want another node than %s", got, target.cfg.NodeID)
	}
	putKey(t, ctx, target, "key-after-transfer")

	if _, err := via.TransferLeadership(ctx, "c9"); !errors.Is(err, api.ErrUnknownPeer) {
		t.Fatalf("transfer to unknown node = %v, want ErrUnknownPeer", err)
	}
}

func TestRemovePeerIsNotReAdded(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := waitLeader(t, nodes)
	rest := others(nodes, leader)
	via, victim := rest[0], rest[1]

	if err := via.RemovePeer(ctx, leader.cfg.NodeID, false); !errors.Is(err, api.ErrPeerIsLeader) {
		t.Fatalf("remove leader = %v, want ErrPeerIsLeader", err)
	}
	if err := via.RemovePeer(ctx, "c9", false); !errors.Is(err, api.ErrUnknownPeer) {
		t.Fatalf("remove unknown = %v, want ErrUnknownPeer", err)
	}
	if err := via.RemovePeer(ctx, victim.cfg.NodeID, false); err != nil {
		t.Fatalf("remove %s: %v", victim.cfg.NodeID, err)
	}
	if _, ok := serverIDs(t, leader)[victim.cfg.NodeID]; ok {
		t.Fatalf("%s still in the configuration", victim.cfg.NodeID)
	}
	// The victim is still alive in gossip; the leader's reconciliation
	// must leave it out.
	if _, ok := leader.pool.Member(victim.cfg.NodeID); !ok {
		t.Fatalf("%s left gossip; the test needs it alive", victim.cfg.NodeID)
	}
	// A configuration change never reaches the FSM; consistent reads must
	// not wait for the next write to move past it.
	readSoon(t, ctx, via)
	for range 3 {
		leader.reconcileMembers()
	}
	if ids := serverIDs(t, leader); len(ids) != 2 {
		t.Fatalf("configuration after reconcile = %v, want 2 servers", ids)
	}
	putKey(t, ctx, via, "key-while-removed")

	// Once the hold ends (or the node restarts) it is added back and,
	// having stayed a passive follower, catches up.
	leader.removed.add(victim.cfg.NodeID, leader.Now().Add(-removedHold))
	leader.reconcileMembers()
	if _, ok := serverIDs(t, leader)[victim.cfg.NodeID]; !ok {
		t.Fatalf("%s not re-added after the hold", victim.cfg.NodeID)
	}
	// It comes back as a non-voter; autopilot promotes it once stable.
	waitFor(t, 15*time.Second, "re-added node promoted to voter", func() bool {
		return serverIDs(t, leader)[victim.cfg.NodeID] == raft.Voter
	})
	waitFor(t, 10*time.Second, "re-added node to catch up", func() bool { return hasKey(victim, "key-while-removed") })
}

// TestOlderBuildIsNotAdded checks that the leader does not add to raft a
// coordinator whose build applies an older set of raft commands: it would
// stop on the first newer entry when it replays the log.
func TestOlderBuildIsNotAdded(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := waitLeader(t, nodes)
	victim := others(nodes, leader)[0]
	setLevel := func(level int) {
		t.Helper()
		self, ok := victim.pool.Member(victim.cfg.NodeID)
		if !ok {
			t.Fatal("the victim does not list itself")
		}
		meta := self.Meta
		meta.FSM = level
		if err := victim.pool.UpdateMeta(meta); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the leader to see the victim's level", func() bool {
			m, ok := leader.pool.Member(victim.cfg.NodeID)
			return ok && m.Meta.FSM == level
		})
	}
	// The victim advertises the older level before it is removed, so the
	// leader's own reconcile loop cannot add it back in between.
	setLevel(fsm.Level - 1)
	if err := leader.RemovePeer(ctx, victim.cfg.NodeID, false); err != nil {
		t.Fatalf("remove %s: %v", victim.cfg.NodeID, err)
	}
	leader.removed.add(victim.cfg.NodeID, leader.Now().Add(-removedHold)) // no hold
	for range 3 {
		leader.reconcileMembers()
	}
	if _, ok := serverIDs(t, leader)[victim.cfg.NodeID]; ok {
		t.Fatalf("%s, advertising FSM level %d, was added", victim.cfg.NodeID, fsm.Level-1)
	}
	setLevel(fsm.Level)
	leader.reconcileMembers()
	if _, ok := serverIDs(t, leader)[victim.cfg.NodeID]; !ok {
		t.Fatalf("%s not added once upgraded", victim.cfg.NodeID)
	}
}

func TestJoinAddsCoordinator(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	putKey(t, ctx, nodes[0], "key-before-join")
	// A fourth coordinator that knows nobody: it cannot bootstrap alone.
	c4 := startNode(t, nodeConfig(t, "c4", 3, nil))
	n, err := follower(nodes).JoinPool(ctx, []string{c4.pool.Addr()})
	if err != nil || n != 1 {
		t.Fatalf("join = %d, %v", n, err)
	}
	leader := waitLeader(t, nodes)
	waitFor(t, 15*time.Second, "c4 to become a voter", func() bool {
		return serverIDs(t, leader)["c4"] == raft.Voter && len(serverIDs(t, leader)) == 4
	})
	waitFor(t, 10*time.Second, "c4 to catch up", func() bool { return hasKey(c4, "key-before-join") })
	readSoon(t, ctx, nodes[0])

	if _, err := nodes[0].JoinPool(ctx, []string{"127.0.0.1:1"}); err == nil {
		t.Fatal("join of a dead address succeeded")
	}
}

// encodeState encodes a state without its clock, which commands after the
// snapshot move on.
func encodeState(t testing.TB, s *fsm.State) []byte {
	t.Helper()
	s = s.Clone()
	s.Now = 0
	var buf bytes.Buffer
	if err := fsm.WriteSnapshot(&buf, s, 0); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestSnapshotSaveRestore(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := follower(nodes)
	for i := range 5 {
		putKey(t, ctx, f, fmt.Sprintf("key-%d", i))
	}
	st, applied, err := f.SnapshotState(ctx)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if len(st.APIKeys) != 5 || applied == 0 {
		t.Fatalf("snapshot holds %d keys at index %d", len(st.APIKeys), applied)
	}
	var saved bytes.Buffer
	if err := fsm.WriteSnapshot(&saved, st, applied); err != nil {
		t.Fatal(err)
	}
	want := encodeState(t, st)

	// Change the state after the save, then restore through a follower.
	putKey(t, ctx, nodes[0], "key-after-save")
	if _, err := f.Apply(ctx, &vbatchv1.RevokeAPIKey{Id: "key-0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RestoreSnapshot(ctx, []byte("not a snapshot")); !errors.Is(err, api.ErrInvalidSnapshot) {
		t.Fatalf("restore of garbage = %v, want ErrInvalidSnapshot", err)
	}
	index, err := f.RestoreSnapshot(ctx, saved.Bytes())
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	for _, c := range nodes {
		waitFor(t, 15*time.Second, c.cfg.NodeID+" to install the restore", func() bool { return c.fsm.AppliedIndex() >= index })
		if err := c.ConsistentRead(ctx); err != nil {
			t.Fatalf("%s consistent read after restore: %v", c.cfg.NodeID, err)
		}
		var got []byte
		c.fsm.View(func(s *fsm.State) { got = encodeState(t, s) })
		if !bytes.Equal(got, want) {
			t.Fatalf("%s state after restore differs from the saved one", c.cfg.NodeID)
		}
	}
	// The cluster keeps taking writes, and reads see them at once.
	putKey(t, ctx, f, "key-after-restore")
	for _, c := range nodes {
		if err := c.ConsistentRead(ctx); err != nil {
			t.Fatal(err)
		}
		if !hasKey(c, "key-after-restore") || hasKey(c, "key-after-save") {
			t.Fatalf("%s: wrong keys after restore and write", c.cfg.NodeID)
		}
	}
}

func TestPeersJSONRecovery(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	putKey(t, ctx, nodes[0], "key-before-loss")
	survivor := waitLeader(t, nodes)
	if err := survivor.ConsistentRead(ctx); err != nil {
		t.Fatal(err)
	}
	// Lose two of three: no quorum is left.
	for _, c := range others(nodes, survivor) {
		if err := c.Close(); err != nil {
			t.Logf("close %s: %v", c.cfg.NodeID, err)
		}
	}
	peers, err := json.Marshal([]map[string]any{
		{"id": survivor.cfg.NodeID, "address": survivor.raftNode.advertise, "non_voter": false},
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(survivor.cfg.DataDir, "raft", PeersFile)
	// The procedure writes peers.json while the survivor is stopped.
	if err := survivor.Close(); err != nil {
		t.Logf("close survivor: %v", err)
	}
	if err := os.WriteFile(path, peers, 0o600); err != nil {
		t.Fatal(err)
	}
	back := restartNode(t, survivor)
	waitLeader(t, []*Coordinator{back})
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("peers.json still there after recovery: %v", err)
	}
	if ids := serverIDs(t, back); len(ids) != 1 {
		t.Fatalf("configuration after recovery = %v", ids)
	}
	if !hasKey(back, "key-before-loss") {
		t.Fatal("state lost in recovery")
	}
	putKey(t, ctx, back, "key-after-recovery")
}

// TestClusterOpsOverHTTP drives the admin endpoints of a real cluster, as
// vbctl does.
func TestClusterOpsOverHTTP(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := waitLeader(t, nodes)
	f := follower(nodes)
	putKey(t, ctx, leader, "key-saved")
	post := func(c *Coordinator, path, contentType string, body []byte) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.HTTPAddr()+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, data
	}

	resp, err := http.Get("http://" + f.HTTPAddr() + "/v1/admin/cluster/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("snapshot: %d %v", resp.StatusCode, err)
	}
	putKey(t, ctx, leader, "key-after-save")
	if code, body := post(f, "/v1/admin/cluster/snapshot/restore", "application/octet-stream", snap); code != http.StatusOK {
		t.Fatalf("restore: %d %s", code, body)
	}
	if err := leader.ConsistentRead(ctx); err != nil {
		t.Fatal(err)
	}
	if !hasKey(leader, "key-saved") || hasKey(leader, "key-after-save") {
		t.Fatal("restore over HTTP did not bring back the saved state")
	}
	body := fmt.Sprintf(`{"id":%q}`, leader.cfg.NodeID)
	if code, out := post(f, "/v1/admin/cluster/remove-peer", "application/json", []byte(body)); code != http.StatusConflict {
		t.Fatalf("remove leader: %d %s", code, out)
	}
	if code, out := post(f, "/v1/admin/cluster/transfer-leadership", "application/json", []byte(`{"to":"`+f.cfg.NodeID+`"}`)); code != http.StatusOK ||
		!strings.Contains(string(out), f.cfg.NodeID) {
		t.Fatalf("transfer: %d %s", code, out)
	}
}
