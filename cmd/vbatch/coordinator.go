package main

import (
	"os"
	"os/signal"

	"github.com/spf13/cobra"

	"github.com/vbatch/vbatch/coordinator"
	"github.com/vbatch/vbatch/internal/cliconfig"
	"github.com/vbatch/vbatch/internal/procsec"
)

func coordinatorCmd() *cobra.Command {
	cfg := coordinator.DefaultConfig()
	var configFile string
	var lf logFlags
	var join []string
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator: raft state, the OpenAI API, leases for agents",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cliconfig.Apply(cmd.Flags(), configFile); err != nil {
				return err
			}
			cfg.Join = splitList(join)
			if cfg.GossipKey == "" && cfg.GossipKeyFile == "" {
				cfg.GossipKey = os.Getenv("VBATCH_GOSSIP_KEY")
			}
			if cfg.RootKey == "" {
				cfg.RootKey = os.Getenv("VBATCH_ROOT_KEY")
			}
			logger, logOut, closeLog, err := setupLogging(lf, "coordinator")
			if err != nil {
				return err
			}
			defer closeLog()
			// Model code the engine runs (same user) must not read this
			// process's environment or memory through /proc.
			if err := procsec.NoDump(); err != nil {
				logger.Warn("cannot make the process non-dumpable; same-user processes can read its /proc files", "err", err)
			}
			defer setupTelemetry("coordinator", logger)()
			hup := catchSIGHUP()
			c, err := coordinator.Start(cfg, logger, logOut)
			if err != nil {
				signal.Stop(hup)
				return err
			}
			onSIGHUP(cmd.Context(), hup, logger, cfg.TLS.Enabled(), c.ReloadTLS)
			<-cmd.Context().Done()
			return c.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON config file whose keys are these flag names")
	f.StringVar(&cfg.NodeID, "node-id", "", "unique, stable id of this coordinator")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for the raft log, snapshots and blobs")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "OpenAI API and /metrics address")
	f.StringVar(&cfg.RPCAddr, "rpc-addr", cfg.RPCAddr, "connect RPC address (agents, peers)")
	f.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "raft transport address")
	f.StringVar(&cfg.GossipAddr, "gossip-addr", cfg.GossipAddr, "gossip (memberlist) address")
	f.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", cfg.BootstrapExpect, "coordinators that must see each other before raft bootstraps")
	f.StringSliceVar(&join, "join", nil, "gossip addresses of members to join (host:port[,host:port])")
	f.StringVar(&cfg.RootKey, "root-key", "", "admin API key (or VBATCH_ROOT_KEY)")
	f.BoolVar(&cfg.InsecureNoAuth, "insecure-no-auth", false, "serve a non-loopback address without any API key")
	f.Int64Var(&cfg.MaxUploadBytes, "max-upload-bytes", cfg.MaxUploadBytes, "largest accepted file upload")
	f.IntVar(&cfg.MaxRequests, "max-requests", cfg.MaxRequests, "most requests in one batch")
	f.IntVar(&cfg.ChunkSize, "chunk-size", cfg.ChunkSize, "input lines per chunk")
	f.IntVar(&cfg.MaxLineBytes, "max-line-bytes", cfg.MaxLineBytes, "longest JSONL input line (0: 10 MiB)")
	f.Int64Var(&cfg.MaxTokens, "max-tokens", cfg.MaxTokens, "cap on max_tokens of any request (0: none)")
	f.Int64Var(&cfg.MaxN, "max-n", cfg.MaxN, "cap on n of any request (0: none)")
	f.Float64Var(&cfg.DefaultKeyRPS, "default-key-rps", cfg.DefaultKeyRPS, "requests per second per key, per coordinator, for keys without their own (0: none)")
	f.Int64Var(&cfg.DefaultMaxEnqueuedRequests, "default-max-enqueued-requests", cfg.DefaultMaxEnqueuedRequests, "unfinished batch requests per project for keys without their own quota (0: none)")
	f.Int64Var(&cfg.DefaultMaxFileBytes, "default-max-file-bytes", cfg.DefaultMaxFileBytes, "file bytes per project for keys without their own quota (0: none)")
	f.StringVar(&cfg.AuditLog, "audit-log", "", "file for audit records (rotated); default: the main log")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "lease time to live without renewal")
	f.DurationVar(&cfg.DeadServerGrace, "dead-server-grace", cfg.DeadServerGrace, "autopilot removes a coordinator gone from gossip this long (0: never)")
	f.DurationVar(&cfg.BatchCompactAfter, "batch-compact-after", cfg.BatchCompactAfter, "drop a finished batch's chunk records from the replicated state, and merge its result files' parts into one blob each, this long after it ends (0: never); its counts and result files stay")
	f.DurationVar(&cfg.AgentForgetAfter, "agent-forget-after", cfg.AgentForgetAfter, "the leader removes an agent gone from gossip this long (0: never); it registers again if it comes back")
	f.DurationVar(&cfg.ServerStabilizationTime, "server-stabilization-time", cfg.ServerStabilizationTime, "a new coordinator votes once healthy this long")
	f.IntVar(&cfg.MinQuorum, "min-quorum", cfg.MinQuorum, "autopilot never removes dead coordinators below this many voters")
	f.DurationVar(&cfg.Timing.HeartbeatTimeout, "raft-heartbeat-timeout", cfg.Timing.HeartbeatTimeout, "a follower without word from the leader this long starts an election")
	f.DurationVar(&cfg.Timing.ElectionTimeout, "raft-election-timeout", cfg.Timing.ElectionTimeout, "a candidate without a majority this long tries again")
	f.DurationVar(&cfg.Timing.LeaderLeaseTimeout, "raft-leader-lease-timeout", cfg.Timing.LeaderLeaseTimeout, "a leader without contact with a majority this long steps down (at most the heartbeat timeout)")
	f.Uint64Var(&cfg.RaftSnapshotThreshold, "raft-snapshot-threshold", cfg.RaftSnapshotThreshold, "raft log entries between snapshots")
	f.Uint64Var(&cfg.RaftTrailingLogs, "raft-trailing-logs", cfg.RaftTrailingLogs, "raft log entries kept after a snapshot")
	f.DurationVar(&cfg.SlowDiskThreshold, "raft-slow-disk-threshold", cfg.SlowDiskThreshold, "a leader whose raft log writes stay slower than this, while a voter's are 4x faster, hands leadership to it (0: never)")
	f.DurationVar(&cfg.BlobScrubInterval, "blob-scrub-interval", cfg.BlobScrubInterval, "start a pass verifying every stored blob this often; a rotted copy is quarantined and fetched again from a peer (0: never)")
	f.Int64Var(&cfg.BlobScrubRate, "blob-scrub-rate", cfg.BlobScrubRate, "most bytes per second a blob scrub pass reads (0: no bound)")
	addTLSFlags(f, &cfg.TLS, &cfg.ClusterName)
	addGossipKeyFlags(f, &cfg.GossipKey, &cfg.GossipKeyFile)
	addLogFlags(f, &lf)
	return cmd
}
