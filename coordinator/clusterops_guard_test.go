package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestRemovePeerQuorumGuard: with one of three voters dead, removing a
// healthy one would leave {leader, dead}, whose majority cannot be
// reached; it is refused, while removing the dead one is not.
func TestRemovePeerQuorumGuard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader, dead, healthy := clusterWithDeadVoter(t)

	// Through the follower, so the refusal crosses ClusterService.
	err := healthy.RemovePeer(ctx, healthy.cfg.NodeID, false)
	var unsafe *api.UnsafeRemovalError
	if !errors.As(err, &unsafe) {
		t.Fatalf("remove healthy %s with %s dead = %v, want UnsafeRemovalError", healthy.cfg.NodeID, dead.cfg.NodeID, err)
	}
	if unsafe.ID != healthy.cfg.NodeID || unsafe.Voters != 2 || len(unsafe.Healthy) != 1 || unsafe.Healthy[0] != leader.cfg.NodeID {
		t.Fatalf("refusal = %+v, want 2 voters, healthy [%s]", unsafe, leader.cfg.NodeID)
	}
	// Over HTTP: 409 unsafe_removal naming the counts.
	body := fmt.Sprintf(`{"id":%q}`, healthy.cfg.NodeID)
	resp, err := http.Post("http://"+leader.HTTPAddr()+"/v1/admin/cluster/remove-peer", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(out), `"unsafe_removal"`) ||
		!strings.Contains(string(out), "leave 2 voters of which 1 are healthy") {
		t.Fatalf("remove over HTTP: %d %s", resp.StatusCode, out)
	}
	if _, ok := serverIDs(t, leader)[healthy.cfg.NodeID]; !ok {
		t.Fatalf("%s left the configuration despite the refusal", healthy.cfg.NodeID)
	}
	if !leader.IsLeader() {
		t.Fatalf("%s lost leadership after a refused removal", leader.cfg.NodeID)
	}
	putKey(t, ctx, healthy, "key-after-refusal")

	// The dead voter itself: {leader, healthy} are both healthy.
	if err := healthy.RemovePeer(ctx, dead.cfg.NodeID, false); err != nil {
		t.Fatalf("remove dead %s: %v", dead.cfg.NodeID, err)
	}
	if ids := serverIDs(t, leader); len(ids) != 2 {
		t.Fatalf("configuration after removing the dead voter = %v", ids)
	}
	putKey(t, ctx, healthy, "key-after-removal")
}

// TestRemovePeerForced: force skips the guard, and the removal takes
// effect even though it costs the cluster its leader.
func TestRemovePeerForced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader, _, healthy := clusterWithDeadVoter(t)
	// The change cannot commit without the dead voter: the leader steps
	// down and the call ends with no leader, but it is not refused.
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
	err := healthy.RemovePeer(rctx, healthy.cfg.NodeID, true)
	rcancel()
	var unsafe *api.UnsafeRemovalError
	if errors.As(err, &unsafe) {
		t.Fatalf("forced removal refused: %v", err)
	}
	if _, ok := serverIDs(t, leader)[healthy.cfg.NodeID]; ok {
		t.Fatalf("forced removal of %s did not reach the configuration (err %v)", healthy.cfg.NodeID, err)
	}
}

// TestRestoreAboveSnapshotIndex: a snapshot saved on a cluster whose log
// is longer than this one's (a rebuilt cluster restarts at index 1) is
// installed above its own applied index, so no lease token is reused.
func TestRestoreAboveSnapshotIndex(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	putKey(t, ctx, nodes[0], "key-saved")
	st, _, err := nodes[0].SnapshotState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const savedAt = 1_000_000
	var buf bytes.Buffer
	if err := fsm.WriteSnapshot(&buf, st, savedAt); err != nil {
		t.Fatal(err)
	}
	leader := waitLeader(t, nodes)
	if last := leader.raftNode.raft.LastIndex(); last >= savedAt {
		t.Fatalf("the test needs a log shorter than %d, got %d", savedAt, last)
	}
	index, err := follower(nodes).RestoreSnapshot(ctx, buf.Bytes())
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if index <= savedAt {
		t.Fatalf("restored at %d, not above the snapshot's applied index %d", index, savedAt)
	}
	for _, c := range nodes {
		waitFor(t, 15*time.Second, c.cfg.NodeID+" to install the restore", func() bool { return c.fsm.AppliedIndex() >= index })
	}
	k := &vbatchv1.APIKey{Id: "key-after-restore", Project: "p", Hash: []byte("h")}
	at, err := nodes[0].Apply(ctx, &vbatchv1.CreateAPIKey{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	if at <= savedAt {
		t.Fatalf("write after the restore at index %d, not above %d", at, savedAt)
	}
}

// clusterWithDeadVoter starts three coordinators and closes one follower:
// it returns the leader, the closed follower and the healthy one.
func clusterWithDeadVoter(t *testing.T) (leader, dead, healthy *Coordinator) {
	t.Helper()
	nodes := startCluster(t, 3)
	leader = waitLeader(t, nodes)
	rest := others(nodes, leader)
	dead, healthy = rest[0], rest[1]
	if err := dead.Close(); err != nil {
		t.Logf("close %s: %v", dead.cfg.NodeID, err)
	}
	return leader, dead, healthy
}
