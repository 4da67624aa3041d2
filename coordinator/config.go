package coordinator

import (
	"errors"
	"fmt"
	"time"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/coordinator/validate"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/internal/tlsutil"
)

// Config is everything a coordinator needs. Flags and the config file map
// onto it one to one (see cmd/vbatch).
type Config struct {
	// NodeID names this coordinator in raft and gossip. It must be unique
	// and stable across restarts: raft identifies servers by it.
	NodeID string `json:"node_id"`
	// DataDir holds the raft log (raft.db), snapshots and the blob store.
	// Restarting with the same DataDir rejoins the cluster.
	DataDir string `json:"data_dir"`
	// HTTPAddr serves the OpenAI API and /metrics.
	HTTPAddr string `json:"http_addr"`
	// RPCAddr serves connect RPC (agents, forwarding) and blob transfer.
	RPCAddr string `json:"rpc_addr"`
	// RaftAddr is raft's TCP transport.
	RaftAddr string `json:"raft_addr"`
	// GossipAddr is memberlist's TCP and UDP port.
	GossipAddr string `json:"gossip_addr"`
	// BootstrapExpect is how many coordinators must see each other over
	// gossip before raft bootstraps. Every coordinator of a new cluster gets
	// the same value; a node with existing raft state ignores it.
	BootstrapExpect int `json:"bootstrap_expect"`
	// Join lists gossip addresses of existing members; this node's own
	// address may be among them.
	Join []string `json:"join"`
	// RootKey is the admin API key. Once set every request needs a key.
	RootKey string `json:"root_key"`
	// InsecureNoAuth allows running without a root key on a non-loopback
	// HTTP address.
	InsecureNoAuth bool `json:"insecure_no_auth"`
	// MaxUploadBytes caps one file upload (default 200 MB).
	MaxUploadBytes int64 `json:"max_upload_bytes"`
	// MaxRequests caps the requests of one batch (default 50,000).
	MaxRequests int `json:"max_requests"`
	// MaxLineBytes caps one JSONL input line (default 10 MiB).
	MaxLineBytes int `json:"max_line_bytes"`
	// MaxTokens and MaxN cap max_tokens (and its aliases) and n (and
	// best_of) of every online request and batch input line; 0 is no cap.
	MaxTokens int64 `json:"max_tokens"`
	MaxN      int64 `json:"max_n"`
	// DefaultKeyRPS, DefaultMaxEnqueuedRequests and DefaultMaxFileBytes are
	// the rate limit and quotas of keys that set none of their own (and of
	// the root key); 0 is no limit.
	DefaultKeyRPS              float64 `json:"default_key_rps"`
	DefaultMaxEnqueuedRequests int64   `json:"default_max_enqueued_requests"`
	DefaultMaxFileBytes        int64   `json:"default_max_file_bytes"`
	// AuditLog, if set, is a file (rotated) for the audit records of every
	// key, cluster and batch administrative action; empty sends them to
	// the main log with logger "audit".
	AuditLog string `json:"audit_log"`
	// ChunkSize is how many input lines make one chunk (default 500).
	ChunkSize int `json:"chunk_size"`
	// LeaseTTL is how long a lease lives without renewal (default 30s).
	LeaseTTL time.Duration `json:"lease_ttl"`

	// TLS names the certificate, key and CA files. Set, they turn on
	// HTTPS for the API and mutual TLS for RPC and raft; the certificate
	// must name server.<ClusterName>.vbatch.
	TLS tlsutil.Files `json:"-"`
	// ClusterName scopes certificate roles and labels gossip, so that two
	// clusters on one network never merge (default "global").
	ClusterName string `json:"cluster_name"`
	// GossipKey is the base64 32-byte gossip encryption key; GossipKeyFile
	// names a file holding it. Once the keyring has been written to
	// DataDir (on first start with a key, and after every rotation), the
	// file there wins over both.
	GossipKey     string `json:"gossip_key"`
	GossipKeyFile string `json:"gossip_key_file"`

	// DeadServerGrace is how long a coordinator may be gone from gossip
	// before autopilot removes it from raft (0 turns removal off).
	DeadServerGrace time.Duration `json:"dead_server_grace"`
	// AgentForgetAfter is how long an agent may be gone from gossip before
	// the leader removes its registration (0: never). Hosts that come and
	// go under new names would otherwise stay listed, and exported, for
	// ever; an agent that comes back registers again.
	AgentForgetAfter time.Duration `json:"agent_forget_after"`
	// BatchCompactAfter is how long after a batch ends the leader drops its
	// chunk records from the state (0: never); see fsm CompactBatch.
	BatchCompactAfter time.Duration `json:"batch_compact_after"`
	// ServerStabilizationTime is how long a new coordinator must stay
	// healthy before autopilot makes it a voter.
	ServerStabilizationTime time.Duration `json:"server_stabilization_time"`
	// MinQuorum is the fewest voters autopilot keeps when removing dead
	// coordinators (0: no floor beyond raft's own quorum rule).
	MinQuorum int `json:"min_quorum"`
	// RaftSnapshotThreshold is how many log entries trigger a snapshot;
	// RaftTrailingLogs how many stay after one, so a briefly absent
	// follower catches up from the log and a new one from the snapshot.
	RaftSnapshotThreshold uint64 `json:"raft_snapshot_threshold"`
	RaftTrailingLogs      uint64 `json:"raft_trailing_logs"`

	// Timing holds raft and gossip timings; zero values take LAN defaults.
	Timing Timing `json:"-"`

	// BlobScrubInterval is the time from the start of one blob scrub pass
	// to the next (0: never). A pass reads every stored blob through the
	// verifying reader: a copy that rotted on disk is quarantined and the
	// repair pass fetches a good one from a peer (blob.Scrubber).
	BlobScrubInterval time.Duration `json:"blob_scrub_interval"`
	// BlobScrubRate bounds the bytes per second a scrub pass reads (0: no
	// bound).
	BlobScrubRate int64 `json:"blob_scrub_rate"`

	// SlowDiskThreshold: a leader whose raft log writes take longer than
	// this (median of the last few seconds), three checks in a row, while
	// a voter's are at least four times faster, hands leadership to that
	// voter. Zero turns the check off.
	SlowDiskThreshold time.Duration `json:"raft_slow_disk_threshold"`

	// gossipTransport, if set, wraps the gossip network transport: tests
	// cut a coordinator off the gossip network with it.
	gossipTransport gossip.TransportWrapper
	// clockOffset shifts this node's wall clock (Now, and the clock it
	// reports in Status and judges peers' against): tests give a node a
	// skewed clock with it.
	clockOffset time.Duration
	// fsmApplyDelay slows every FSM apply: tests stall the FSM with it.
	fsmApplyDelay time.Duration
}

// Timing holds the cluster's timers. The defaults suit a LAN: a dead
// leader is replaced within about two seconds.
type Timing struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// GossipProbeInterval is memberlist's failure-detector period.
	GossipProbeInterval time.Duration
	// RepairInterval is how often blobs are repaired and collected.
	RepairInterval time.Duration
	// BlobGCGrace keeps unreferenced blobs this long (uploads in flight).
	BlobGCGrace time.Duration
	// AutopilotInterval is how often autopilot updates its state and
	// reconciles; AutopilotLastContact is the longest a healthy server
	// may go without hearing from the leader.
	AutopilotInterval    time.Duration
	AutopilotLastContact time.Duration
}

// LANTiming returns the default timings.
func LANTiming() Timing {
	return Timing{
		// 200 ms: a dead leader is replaced in about 0.5 s, and two busy
		// loops on both cores of a 2-core host caused no election in 10
		// minutes (docs/reliability.md).
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 200 * time.Millisecond,
		// Followers learn of commits from the leader's commit notices
		// (commitnotice.go), so raft's idle AppendEntries can be rare;
		// they still resend what a broken connection lost, so not too rare.
		CommitTimeout:       100 * time.Millisecond,
		GossipProbeInterval: 500 * time.Millisecond,
		RepairInterval:      30 * time.Second,
		BlobGCGrace:         10 * time.Minute,
		AutopilotInterval:   time.Second,
		// Heartbeats go out every HeartbeatTimeout/10; a follower that
		// has not heard from the leader in two timeouts is not healthy.
		AutopilotLastContact: time.Second,
	}
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:                ":8000",
		RPCAddr:                 ":8001",
		RaftAddr:                ":8002",
		GossipAddr:              ":8003",
		BootstrapExpect:         3,
		MaxUploadBytes:          200 << 20,
		MaxRequests:             50000,
		ChunkSize:               500,
		LeaseTTL:                30 * time.Second,
		DeadServerGrace:         5 * time.Minute,
		AgentForgetAfter:        24 * time.Hour,
		BatchCompactAfter:       time.Hour,
		ServerStabilizationTime: 10 * time.Second,
		RaftSnapshotThreshold:   8192,
		RaftTrailingLogs:        10240,
		SlowDiskThreshold:       100 * time.Millisecond,
		BlobScrubInterval:       24 * time.Hour,
		BlobScrubRate:           32 << 20,
		ClusterName:             tlsutil.DefaultCluster,
		Timing:                  LANTiming(),
	}
}

func (c *Config) validateOpts() validate.Options {
	return validate.Options{
		MaxRequests: c.MaxRequests, ChunkSize: c.ChunkSize, MaxLineBytes: c.MaxLineBytes,
		MaxTokens: c.MaxTokens, MaxN: c.MaxN,
	}
}

// limits are the API's rate limits, quotas and request caps.
func (c *Config) limits() api.Limits {
	return api.Limits{
		DefaultKeyLimits: api.KeyLimits{
			RequestsPerSecond:   c.DefaultKeyRPS,
			MaxEnqueuedRequests: c.DefaultMaxEnqueuedRequests,
			MaxFileBytes:        c.DefaultMaxFileBytes,
		},
		MaxTokens: c.MaxTokens,
		MaxN:      c.MaxN,
	}
}

// Check reports the first configuration error.
func (c *Config) Check() error {
	switch {
	case c.NodeID == "":
		return errors.New("--node-id is required")
	case c.DataDir == "":
		return errors.New("--data-dir is required")
	case c.BootstrapExpect < 1:
		return errors.New("--bootstrap-expect must be at least 1")
	case c.ChunkSize < 1:
		return errors.New("chunk size must be at least 1")
	case c.LeaseTTL < time.Second || c.LeaseTTL > fsm.MaxLeaseTTL:
		return fmt.Errorf("lease TTL must be from 1s to %s", fsm.MaxLeaseTTL)
	case c.DeadServerGrace < 0 || c.ServerStabilizationTime < 0 || c.MinQuorum < 0:
		return errors.New("autopilot settings must not be negative")
	case c.AgentForgetAfter < 0 || c.BatchCompactAfter < 0:
		return errors.New("--agent-forget-after and --batch-compact-after must not be negative")
	case c.BlobScrubInterval < 0 || c.BlobScrubRate < 0:
		return errors.New("--blob-scrub-interval and --blob-scrub-rate must not be negative (0 means never and no bound)")
	case c.MaxLineBytes < 0 || c.MaxTokens < 0 || c.MaxN < 0 || c.DefaultKeyRPS < 0 ||
		c.DefaultMaxEnqueuedRequests < 0 || c.DefaultMaxFileBytes < 0:
		return errors.New("limits and quotas must not be negative (0 means none)")
	}
	if t := c.Timing; t.LeaderLeaseTimeout > t.HeartbeatTimeout && t.HeartbeatTimeout > 0 {
		return fmt.Errorf("--raft-leader-lease-timeout %s must not exceed --raft-heartbeat-timeout %s", t.LeaderLeaseTimeout, t.HeartbeatTimeout)
	}
	if c.RaftSnapshotThreshold == 0 {
		c.RaftSnapshotThreshold = 8192
	}
	if c.RaftTrailingLogs == 0 {
		c.RaftTrailingLogs = 10240
	}
	if c.ClusterName == "" {
		c.ClusterName = tlsutil.DefaultCluster
	}
	if err := tlsutil.CheckName("--cluster-name", c.ClusterName); err != nil {
		return err
	}
	if err := c.TLS.Check(); err != nil {
		return err
	}
	if c.RootKey == "" && !c.InsecureNoAuth && !netutil.IsLoopback(c.HTTPAddr) {
		return fmt.Errorf("refusing to serve %s without a root key: set --root-key (or VBATCH_ROOT_KEY), or pass --insecure-no-auth", c.HTTPAddr)
	}
	def := LANTiming()
	t := &c.Timing
	for _, f := range []struct {
		v *time.Duration
		d time.Duration
	}{
		{&t.HeartbeatTimeout, def.HeartbeatTimeout}, {&t.ElectionTimeout, def.ElectionTimeout},
		{&t.LeaderLeaseTimeout, def.LeaderLeaseTimeout}, {&t.CommitTimeout, def.CommitTimeout},
		{&t.GossipProbeInterval, def.GossipProbeInterval}, {&t.RepairInterval, def.RepairInterval},
		{&t.BlobGCGrace, def.BlobGCGrace}, {&t.AutopilotInterval, def.AutopilotInterval},
		{&t.AutopilotLastContact, def.AutopilotLastContact},
	} {
		if *f.v == 0 {
			*f.v = f.d
		}
	}
	return nil
}
