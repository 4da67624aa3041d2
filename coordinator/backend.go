package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/coordinator/blob"
	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// StoreUpload writes r to the local blob store and replicates it to a
// majority of the voters before returning, so the file's metadata is only
// committed once a quorum holds its bytes. The content streams to the other
// voters while it arrives, so their copies are written at the same time as
// this one; a peer that cannot keep up, or fails, gets its copy afterwards.
func (c *Coordinator) StoreUpload(ctx context.Context, r io.Reader) (*vbatchv1.BlobRef, []string, error) {
	need, err := c.quorum()
	if err != nil {
		return nil, nil, err
	}
	fan := c.repl.StreamToPeers(ctx, need-1)
	ref, err := c.blobs.IngestTee(r, fan)
	if err != nil {
		fan.Abort(err)
		if errors.Is(err, blob.ErrNoSpace) {
			return nil, nil, fmt.Errorf("ingest: %w (%w)", api.ErrInsufficientStorage, err)
		}
		return nil, nil, fmt.Errorf("ingest: %w", err)
	}
	streamed := fan.Finish(ref.Sha256, ref.Bytes)
	c.log.DebugContext(ctx, "upload streamed to peers", "sha", ref.Sha256, "peers", streamed)
	// Peers that took the stream confirm with a HEAD; the rest are pushed.
	replicas, err := c.replicate(ctx, ref.Sha256)
	if err != nil {
		return nil, nil, err
	}
	return ref, replicas, nil
}

// HoldBlob re-confirms that a majority of voters hold a stored blob and
// restarts its GC grace on each (a local touch, a HEAD or a push to peers).
func (c *Coordinator) HoldBlob(ctx context.Context, sha string) ([]string, error) {
	return c.replicate(ctx, sha)
}

// quorum is how many nodes, this one included, must hold a blob before
// metadata referencing it commits: a majority of the voters, plus this
// node when it is not a voter itself (a coordinator still being promoted,
// or one being removed), since its own copy may be gone with it. A node
// that knows no voters yet (it has not bootstrapped, or has not received
// the configuration from the leader) cannot tell what a majority is and
// answers unavailable rather than count itself as the whole cluster.
func (c *Coordinator) quorum() (int, error) {
	voters := c.voters()
	if len(voters) == 0 {
		return 0, fmt.Errorf("this coordinator does not know the cluster's voters yet: %w", api.ErrUnavailable)
	}
	need := len(voters)/2 + 1
	if !slices.ContainsFunc(voters, func(s raft.Server) bool { return string(s.ID) == c.cfg.NodeID }) {
		need++
	}
	return need, nil
}

// replicate copies a local blob onto a majority of the voters.
func (c *Coordinator) replicate(ctx context.Context, sha string) ([]string, error) {
	need, err := c.quorum()
	if err != nil {
		return nil, fmt.Errorf("replicate blob %s: %w", sha[:12], err)
	}
	replicas, err := c.repl.Replicate(ctx, sha, need)
	if err != nil {
		return nil, fmt.Errorf("replicate blob %s to %d nodes: %w (%w)", sha[:12], need, api.ErrUnavailable, err)
	}
	return replicas, nil
}

// ClusterStatus asks every server of the raft configuration for its view.
func (c *Coordinator) ClusterStatus(ctx context.Context) (*api.ClusterStatus, error) {
	f := c.raftNode.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	_, leader := c.raftNode.raft.LeaderWithID()
	out := &api.ClusterStatus{Leader: string(leader)}
	for _, s := range f.Configuration().Servers {
		cs := api.ClusterServer{ID: string(s.ID), RaftAddr: string(s.Address), Suffrage: suffrage(s.Suffrage), State: "unknown"}
		if string(s.ID) == c.cfg.NodeID {
			cs.FSMLevel = fsm.Level
		} else if m, ok := c.coordinatorMember(string(s.ID)); ok {
			cs.FSMLevel = max(m.Meta.FSM, 1)
		}
		if addr, ok := c.rpcAddrOf(string(s.ID)); ok {
			cs.RPCAddr = addr
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := c.clusterClient(addr).Status(cctx, connect.NewRequest(&vbatchv1.StatusRequest{}))
			cancel()
			if err == nil {
				cs.State, cs.LastIndex, cs.Term = resp.Msg.State, resp.Msg.LastIndex, resp.Msg.Term
				cs.HTTPAddr, cs.Reachable = resp.Msg.HttpAddr, true
				if resp.Msg.LostState {
					// Restarted without its raft state: out of raft
					// until the leader removes it (incarnation.go).
					cs.State = "LostState"
				}
				if ms := resp.Msg.LogWriteMs; ms >= 0 {
					cs.LogWriteMs = &ms
				}
			}
		}
		out.Servers = append(out.Servers, cs)
	}
	sort.Slice(out.Servers, func(i, j int) bool { return out.Servers[i].ID < out.Servers[j].ID })
	if h, err := c.AutopilotHealth(ctx); err != nil {
		out.AutopilotError = err.Error()
	} else {
		out.Autopilot = toAutopilotStatus(h)
	}
	return out, nil
}

func suffrage(s raft.ServerSuffrage) string {
	switch s {
	case raft.Voter:
		return "voter"
	case raft.Nonvoter:
		return "nonvoter"
	default:
		return "staging"
	}
}
