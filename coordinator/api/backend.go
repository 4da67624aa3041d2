package api

import (
	"context"
	"io"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Backend is what the HTTP API needs from the coordinator it runs in. The
// coordinator package implements it; tests may use a fake.
type Backend interface {
	// FSM is this node's replicated state, for local (possibly stale) reads.
	FSM() *fsm.FSM
	// Apply proposes a command (one of the fsm command messages, such as
	// *vbatchv1.CreateFile) through the leader, forwarding if this node is a
	// follower, and returns after it committed and applied locally. A
	// rejection is an fsm sentinel error (errors.Is(err, fsm.ErrNotFound)...);
	// ErrNoLeader or a context error when the cluster cannot commit.
	Apply(ctx context.Context, cmd proto.Message) (index uint64, err error)
	// ConsistentRead returns once this node's state includes every write the
	// leader had committed when the call began (leadership verified).
	ConsistentRead(ctx context.Context) error
	// StoreUpload streams r into the blob store, replicates it to a majority
	// of voters and returns its reference and the nodes that hold it.
	StoreUpload(ctx context.Context, r io.Reader) (ref *vbatchv1.BlobRef, replicas []string, err error)
	// HoldBlob confirms, just before a reference to a stored blob commits,
	// that a majority of voters still hold it, restarting its GC grace on
	// every copy it counts; it returns the nodes that hold it. Whatever
	// came between the store and the commit (the rest of a slow request
	// body) cannot then have outlasted the grace.
	HoldBlob(ctx context.Context, sha string) (replicas []string, err error)
	// OpenFile returns the bytes of a file: the concatenation of its parts,
	// each verified against its hash and fetched from a peer if missing here.
	OpenFile(ctx context.Context, f *vbatchv1.File) (io.ReadCloser, error)
	// ClusterStatus describes the raft cluster for vbctl cluster status.
	ClusterStatus(ctx context.Context) (*ClusterStatus, error)
	// Agents describes every registered agent.
	Agents(ctx context.Context) ([]AgentInfo, error)
	// DrainAgent stops giving an agent leases and asks it to hand back the
	// ones it holds.
	DrainAgent(ctx context.Context, id string) error
	// UndrainAgent lets a draining agent take leases again.
	UndrainAgent(ctx context.Context, id string) error
	// RemoveAgent forgets a registered agent that has left gossip (a
	// retired one) and hands its leased chunks back. It fails with an
	// error wrapping fsm.ErrConflict while the agent is alive in gossip,
	// and fsm.ErrNotFound for an agent the state does not list.
	RemoveAgent(ctx context.Context, id string) error
	// Now is the clock used to stamp ids and timestamps.
	Now() time.Time
	// AtFSMLevel reports whether every server of the raft configuration
	// applies the commands of the given FSM level (fsm.Level), so that a
	// command or field of that level may be proposed.
	AtFSMLevel(level int) bool
	// StateFresh returns nil while this node's state can be trusted to be
	// recent (it leads, or heard from the leader lately), else an error
	// wrapping ErrUnavailable. Stored API keys are checked against the
	// local state: a node cut off from the cluster must not go on
	// accepting keys revoked since.
	StateFresh() error
}

// ClusterStatus is the body of GET /v1/admin/cluster/status.
type ClusterStatus struct {
	Leader  string          `json:"leader"`
	Servers []ClusterServer `json:"servers"`
	// Autopilot is the leader's autopilot view; AutopilotError says why
	// it is missing (no leader, or the leader's first update pending).
	Autopilot      *AutopilotStatus `json:"autopilot,omitempty"`
	AutopilotError string           `json:"autopilot_error,omitempty"`
}

// AutopilotStatus is the cluster's health as raft-autopilot sees it.
type AutopilotStatus struct {
	// Healthy: every server is alive, in contact and caught up.
	Healthy bool `json:"healthy"`
	// FailureTolerance is how many voters may fail with quorum kept.
	FailureTolerance int `json:"failure_tolerance"`
	// StabilizationTime is how long a server must stay healthy to be
	// stable (a new one is then promoted to voter).
	StabilizationTime string `json:"stabilization_time"`
	// DeadServerGrace is how long a coordinator may be gone from gossip
	// before it is removed from raft ("0s": never).
	DeadServerGrace string                  `json:"dead_server_grace"`
	Servers         []AutopilotServerHealth `json:"servers"`
}

// AutopilotServerHealth is one server's health.
type AutopilotServerHealth struct {
	ID         string `json:"id"`
	NodeStatus string `json:"node_status"`
	RaftState  string `json:"raft_state"`
	Healthy    bool   `json:"healthy"`
	// StableSince is when the server's health last changed (RFC 3339).
	StableSince   string `json:"stable_since,omitempty"`
	LastContactMs int64  `json:"last_contact_ms"`
	LastIndex     uint64 `json:"last_index"`
}

// ClusterServer is one raft server as vbctl shows it.
type ClusterServer struct {
	ID        string `json:"id"`
	RaftAddr  string `json:"raft_addr"`
	HTTPAddr  string `json:"http_addr"`
	RPCAddr   string `json:"rpc_addr"`
	Suffrage  string `json:"suffrage"`
	State     string `json:"state"`
	LastIndex uint64 `json:"last_index"`
	Term      uint64 `json:"term"`
	Reachable bool   `json:"reachable"`
	// LogWriteMs is the server's recent median raft log write (which
	// syncs its disk), in milliseconds; absent when it wrote none lately
	// or did not answer.
	LogWriteMs *float64 `json:"log_write_ms,omitempty"`
	// FSMLevel is the newest set of raft commands the server's build
	// applies, as it advertises in gossip; absent while gossip does not
	// list it.
	FSMLevel int `json:"fsm_level,omitempty"`
}

// AgentInfo is one agent as GET /v1/admin/agents shows it.
type AgentInfo struct {
	ID           string          `json:"id"`
	RPCAddr      string          `json:"rpc_addr"`
	Models       []string        `json:"models"`
	GPUs         []*vbatchv1.GPU `json:"gpus"`
	LiveLeases   int             `json:"live_leases"`
	State        string          `json:"state"`
	LastSeen     int64           `json:"last_seen"`
	RegisteredAt int64           `json:"registered_at"`
}
