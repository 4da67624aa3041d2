package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// The cluster operations of vbctl cluster: leadership transfer, peer
// removal, gossip join and snapshot save/restore. Operations that change
// the raft configuration or state run on the leader; a follower forwards
// them over ClusterService, as Apply does.

// removedHold is how long the leader keeps a removed server out of raft
// while it stays alive in gossip (see removedPeers).
const removedHold = 10 * time.Minute

// transferWait bounds how long a leadership transfer waits for the new
// leader to be known.
const transferWait = 5 * time.Second

// restoreTimeout bounds raft.Restore (writing the snapshot and installing
// it on a quorum).
const restoreTimeout = time.Minute

// restoreIndexGap is how far past its last log index, or past the
// snapshot's own applied index when that is higher, the leader installs a
// restored snapshot. The snapshot's header carries that index, so every
// node's FSM reports the right applied index after the restore; the gap
// absorbs entries appended between reading the last index and the restore.
const restoreIndexGap = 1024

var _ api.ClusterOps = (*Coordinator)(nil)

// removedPeers remembers the servers remove-peer took out of raft, so that
// reconcileMembers does not add one straight back while it is still alive
// in gossip. An entry lasts removedHold, or until the node rejoins the
// gossip pool (a restart: its operator wants it back). The set lives on
// the node that served the removal and on the leader only; a new leader
// elected within the hold does not know it and re-adds a live removed
// node (docs/operations.md: stop the node before or right after removing).
type removedPeers struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (r *removedPeers) add(id string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at == nil {
		r.at = map[string]time.Time{}
	}
	r.at[id] = now
}

func (r *removedPeers) forget(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.at, id)
}

// held reports whether id was removed less than removedHold ago.
func (r *removedPeers) held(id string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.at[id]
	if ok && now.Sub(t) >= removedHold {
		delete(r.at, id)
		return false
	}
	return ok
}

// onLeader runs local if this node leads, else remote against the leader's
// ClusterService, retrying across a failover until ctx ends.
func (c *Coordinator) onLeader(ctx context.Context, local func() error, remote func(vbatchv1connect.ClusterServiceClient) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
	}
	backoff := 20 * time.Millisecond
	for {
		var err error
		r := c.raftNode.raft
		if r.State() == raft.Leader {
			err = local()
		} else if _, leaderID := r.LeaderWithID(); leaderID == "" {
			err = ErrNoLeader
		} else if addr, ok := c.rpcAddrOf(string(leaderID)); !ok {
			err = fmt.Errorf("%w: leader %s has no known RPC address", ErrNoLeader, leaderID)
		} else {
			err = fromConnect(remote(c.clusterClient(addr)))
		}
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

// fromConnect turns the codes the leader answers cluster operations with
// back into the api sentinels.
func fromConnect(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	if unsafe, ok := unsafeFromConnect(ce); ok {
		return unsafe
	}
	switch ce.Code() {
	case connect.CodeNotFound:
		return fmt.Errorf("%w: %s", api.ErrUnknownPeer, ce.Message())
	case connect.CodeAlreadyExists:
		return fmt.Errorf("%w: %s", api.ErrPeerIsLeader, ce.Message())
	case connect.CodeInvalidArgument:
		return fmt.Errorf("%w: %s", api.ErrInvalidSnapshot, ce.Message())
	}
	return err
}

// toConnect is fromConnect's inverse, for the leader's handlers.
func toConnect(err error) error {
	if ce, ok := unsafeToConnect(err); ok {
		return ce
	}
	switch {
	case errors.Is(err, api.ErrUnknownPeer):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, api.ErrPeerIsLeader):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, api.ErrInvalidSnapshot):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, raft.ErrNotLeader):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case retryable(err):
		return connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

// TransferLeadership hands leadership to the voter to (any voter when
// empty) and returns the new leader's id.
func (c *Coordinator) TransferLeadership(ctx context.Context, to string) (string, error) {
	var leader string
	err := c.onLeader(ctx,
		func() (err error) { leader, err = c.transferLocal(ctx, to); return err },
		func(cl vbatchv1connect.ClusterServiceClient) error {
			resp, err := cl.TransferLeadership(ctx, connect.NewRequest(&vbatchv1.TransferLeadershipRequest{To: to}))
			if err == nil {
				leader = resp.Msg.Leader
			}
			return err
		})
	if err != nil {
		return "", fmt.Errorf("transfer leadership: %w", err)
	}
	return leader, nil
}

// transferLocal runs on the leader.
func (c *Coordinator) transferLocal(ctx context.Context, to string) (string, error) {
	r := c.raftNode.raft
	if r.State() != raft.Leader {
		return "", raft.ErrNotLeader
	}
	self := c.cfg.NodeID
	var f raft.Future
	if to == "" {
		f = r.LeadershipTransfer()
	} else {
		srv, ok := c.server(to)
		if !ok {
			return "", fmt.Errorf("%w: %s", api.ErrUnknownPeer, to)
		}
		if to == self {
			return self, nil
		}
		if srv.Suffrage != raft.Voter {
			return "", fmt.Errorf("%w: %s is not a voter", api.ErrUnknownPeer, to)
		}
		f = r.LeadershipTransferToServer(srv.ID, srv.Address)
	}
	if err := c.raftNode.await(f); err != nil {
		return "", fmt.Errorf("raft leadership transfer: %w", err)
	}
	c.log.Info("leadership transferred", "to", to)
	wait, cancel := context.WithTimeout(ctx, transferWait)
	defer cancel()
	for {
		if _, id := r.LeaderWithID(); id != "" && string(id) != self {
			return string(id), nil
		}
		select {
		case <-wait.Done():
			// The transfer completed; the new leader is just not known here
			// yet.
			return "", nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// server finds a server of the current raft configuration.
func (c *Coordinator) server(id string) (raft.Server, bool) {
	f := c.raftNode.raft.GetConfiguration()
	if f.Error() != nil {
		return raft.Server{}, false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return s, true
		}
	}
	return raft.Server{}, false
}

// RemovePeer removes a server (not the leader) from the raft configuration
// and keeps it from being re-added at once (see removedPeers). Unless force
// is set, the leader refuses a removal that would leave no healthy majority
// of voters (see removalSafety).
func (c *Coordinator) RemovePeer(ctx context.Context, id string, force bool) error {
	c.removed.add(id, c.Now())
	err := c.onLeader(ctx,
		func() error { return c.removeLocal(ctx, id, force) },
		func(cl vbatchv1connect.ClusterServiceClient) error {
			req := connect.NewRequest(&vbatchv1.RemovePeerRequest{Id: id})
			if force {
				req.Header().Set(forceRemovalHeader, "true")
			}
			_, err := cl.RemovePeer(ctx, req)
			return err
		})
	if err != nil {
		c.removed.forget(id)
		return fmt.Errorf("remove peer %s: %w", id, err)
	}
	return nil
}

// removeLocal runs on the leader.
func (c *Coordinator) removeLocal(ctx context.Context, id string, force bool) error {
	r := c.raftNode.raft
	if r.State() != raft.Leader {
		return raft.ErrNotLeader
	}
	if id == c.cfg.NodeID {
		return fmt.Errorf("%w: %s", api.ErrPeerIsLeader, id)
	}
	srv, ok := c.server(id)
	if !ok {
		return fmt.Errorf("%w: %s", api.ErrUnknownPeer, id)
	}
	if srv.Suffrage == raft.Voter {
		if err := c.removalSafety(ctx, id); err != nil {
			if !force {
				return err
			}
			c.log.Warn("forced removal leaves no healthy majority of voters", "node", id, "err", err)
		}
	}
	c.removed.add(id, c.Now())
	if err := c.raftNode.await(r.RemoveServer(raft.ServerID(id), 0, 5*time.Second)); err != nil {
		c.removed.forget(id)
		return fmt.Errorf("raft remove server: %w", err)
	}
	c.log.Info("removed server from raft", "node", id, "forced", force)
	if _, err := c.commitBarrier("remove peer"); err != nil {
		c.log.Warn("commit after configuration change", "err", err)
	}
	return nil
}

// commitBarrier commits a command that changes nothing (an empty
// ExpireLeases) and returns its index. Consistent reads wait until the
// FSM has applied the leader's commit index, but configuration changes and
// raft's no-op entries never reach the FSM: without a command after them,
// every consistent read would wait for the next write.
func (c *Coordinator) commitBarrier(reason string) (uint64, error) {
	data, err := fsm.Encode(&vbatchv1.ExpireLeases{Reason: reason}, c.Now())
	if err != nil {
		return 0, fmt.Errorf("encode barrier command: %w", err)
	}
	res, err := c.applyLocal(context.Background(), data)
	if err != nil {
		return 0, fmt.Errorf("barrier command after %s: %w", reason, err)
	}
	return res.Index, nil
}

// JoinPool joins this node's gossip pool to the addresses.
func (c *Coordinator) JoinPool(_ context.Context, addrs []string) (int, error) {
	n, err := c.pool.Join(addrs)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("gossip join %v: %w", addrs, err)
	}
	c.log.Info("joined gossip addresses", "addresses", addrs, "contacted", n)
	return n, nil
}

// SnapshotState returns a copy of the state after a consistent read, and
// the raft index it reflects.
func (c *Coordinator) SnapshotState(ctx context.Context) (*fsm.State, uint64, error) {
	if err := c.ConsistentRead(ctx); err != nil {
		return nil, 0, err
	}
	// The index is read around the copy; an entry applied in between makes
	// the pair disagree, so copy again (the header index is informative:
	// a restore installs the state at a new index anyway).
	var st *fsm.State
	var applied uint64
	for range 10 {
		applied = c.fsm.AppliedIndex()
		c.fsm.View(func(s *fsm.State) { st = s.Clone() })
		if c.fsm.AppliedIndex() == applied {
			break
		}
	}
	return st, applied, nil
}

// RestoreSnapshot replaces the state on every node with the snapshot.
func (c *Coordinator) RestoreSnapshot(ctx context.Context, snapshot []byte) (uint64, error) {
	if _, _, err := fsm.ReadSnapshot(bytes.NewReader(snapshot)); err != nil {
		return 0, fmt.Errorf("%w: %v", api.ErrInvalidSnapshot, err)
	}
	var index uint64
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, restoreTimeout+15*time.Second)
		defer cancel()
	}
	err := c.onLeader(ctx,
		func() (err error) { index, err = c.restoreLocal(snapshot); return err },
		func(cl vbatchv1connect.ClusterServiceClient) error {
			resp, err := cl.Restore(ctx, connect.NewRequest(&vbatchv1.RestoreRequest{Snapshot: snapshot}))
			if err == nil {
				index = resp.Msg.Index
			}
			return err
		})
	if err != nil {
		return 0, fmt.Errorf("restore snapshot: %w", err)
	}
	return index, nil
}

// restoreLocal runs on the leader: it re-encodes the snapshot with the
// index it will be installed at and hands it to raft.Restore, which
// installs it here and sends it to every follower. It returns the index of
// the first command after the restore.
func (c *Coordinator) restoreLocal(snapshot []byte) (uint64, error) {
	r := c.raftNode.raft
	if r.State() != raft.Leader {
		return 0, raft.ErrNotLeader
	}
	st, hdr, err := fsm.ReadSnapshot(bytes.NewReader(snapshot))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", api.ErrInvalidSnapshot, err)
	}
	// raft installs a user snapshot at max(meta.Index, last index) + 1.
	// The restored state holds leases whose tokens are raft indexes up to
	// the snapshot's applied index, which on a rebuilt cluster (indexes
	// restarted at 1) may be past this log's end: install above both, so a
	// lease granted after the restore never reuses a restored token.
	index := max(r.LastIndex(), hdr.AppliedIndex) + restoreIndexGap
	var buf bytes.Buffer
	if err := fsm.WriteSnapshot(&buf, st, index); err != nil {
		return 0, fmt.Errorf("re-encode snapshot: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index - 1, Size: int64(buf.Len())}
	start := time.Now()
	if err := r.Restore(meta, io.NopCloser(&buf), restoreTimeout); err != nil {
		return 0, fmt.Errorf("raft restore: %w", err)
	}
	c.log.Warn("replicated state replaced from a snapshot", "index", index, "bytes", meta.Size, "duration", time.Since(start))
	// raft follows the restore with a no-op entry the FSM never sees.
	return c.commitBarrier("snapshot restore")
}

// TransferLeadership hands leadership away if this node leads.
func (s *clusterService) TransferLeadership(ctx context.Context, req *connect.Request[vbatchv1.TransferLeadershipRequest]) (*connect.Response[vbatchv1.TransferLeadershipResponse], error) {
	leader, err := s.c.transferLocal(ctx, req.Msg.To)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&vbatchv1.TransferLeadershipResponse{Leader: leader}), nil
}

// RemovePeer removes a server if this node leads. The force flag travels
// in the forceRemovalHeader (RemovePeerRequest has no field for it).
func (s *clusterService) RemovePeer(ctx context.Context, req *connect.Request[vbatchv1.RemovePeerRequest]) (*connect.Response[vbatchv1.RemovePeerResponse], error) {
	force := req.Header().Get(forceRemovalHeader) == "true"
	if err := s.c.removeLocal(ctx, req.Msg.Id, force); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&vbatchv1.RemovePeerResponse{}), nil
}

// Restore installs a snapshot if this node leads.
func (s *clusterService) Restore(ctx context.Context, req *connect.Request[vbatchv1.RestoreRequest]) (*connect.Response[vbatchv1.RestoreResponse], error) {
	index, err := s.c.restoreLocal(req.Msg.Snapshot)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&vbatchv1.RestoreResponse{Index: index}), nil
}
