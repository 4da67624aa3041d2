package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vbatch/vbatch/internal/ids"
	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/internal/tlsutil"
)

// Config is everything an agent needs. Flags and the config file map onto
// it one to one (see cmd/vbatch).
type Config struct {
	// NodeID names this agent in gossip and in the coordinators' state. It
	// must be unique in the cluster and stable across restarts, or the
	// coordinators see a new agent after every restart. Empty means: read
	// DataDir/node-id, creating it with a random id the first time.
	NodeID string `json:"node_id"`
	// DataDir holds the agent's node-id file and whatever the engine keeps
	// on disk.
	DataDir string `json:"data_dir"`
	// Join lists gossip addresses of cluster members (any coordinator's
	// gossip address works). The agent retries with back-off until one
	// answers. Required unless Coordinators is set.
	Join []string `json:"join"`
	// GossipAddr is memberlist's TCP and UDP port.
	GossipAddr string `json:"gossip_addr"`
	// MetricsAddr is the agent's HTTP listener: /metrics, /metrics/engine,
	// /health and the online-inference endpoints coordinators route to
	// (POST /v1/chat/completions, /v1/completions, /v1/embeddings). Its
	// advertised form is the agent's rpc_addr.
	MetricsAddr string `json:"metrics_addr"`
	// AdvertiseAddr, when set, is the address (host:port, used as is)
	// coordinators reach the HTTP listener at: the agent's rpc_addr in
	// gossip and registration. Empty derives it from MetricsAddr (this
	// host's private IP when that binds every interface). The dev cluster
	// sets it to loopback when its listeners bind every interface, so
	// its coordinators' online requests come from loopback (see
	// OnlineFromLoopbackOnly). No flag: programs set it.
	AdvertiseAddr string `json:"-"`
	// OnlineFromLoopbackOnly refuses online-inference requests whose
	// remote address is not loopback (403, an OpenAI error with code
	// "forbidden"); /metrics, /metrics/engine and /health stay open to
	// everyone. Without TLS nothing else stops a caller that reaches
	// MetricsAddr from using the engine with no key, so a listener moved
	// off loopback only to be scraped (`vbatch dev --bind-host`) sets it.
	// The coordinators must then run on this host and reach the agent
	// over loopback: the advertised address (AdvertiseAddr, else
	// MetricsAddr) must be a loopback one, which Validate checks. No flag:
	// a fleet across hosts uses TLS, under which only coordinators'
	// certificates are let through.
	OnlineFromLoopbackOnly bool `json:"-"`
	// Models lists the models the agent leases work for. Empty means the
	// engine's own list (Engine.Models).
	Models []string `json:"models"`
	// Concurrency bounds the batch requests in flight to the engine, across
	// every chunk the agent holds. Too low starves the engine's batching;
	// too high only lengthens the engine's queue (and the work lost when a
	// lease is revoked).
	Concurrency int `json:"concurrency"`
	// MaxLeases is how many chunks the agent holds at once. Two keeps the
	// engine busy while one chunk's tail finishes.
	MaxLeases int `json:"max_leases"`
	// PartLines commits a part once this many finished lines are ready in
	// order. Smaller parts lose less work to a crash but cost more raft
	// entries and blobs.
	PartLines int `json:"part_lines"`
	// PartInterval commits whatever finished lines are ready in order at
	// least this often.
	PartInterval time.Duration `json:"part_interval"`
	// PartBytes bounds a part's output and error bytes: a part is cut
	// before the line that would take it past the bound (a single larger
	// line is a part alone), so a part of long answers stays one modest
	// message and one quick replication.
	PartBytes int64 `json:"part_bytes"`
	// LeaseWait bounds one long poll for a lease.
	LeaseWait time.Duration `json:"lease_wait"`
	// RetryMax is how many times a request that failed with a connection
	// error or a retryable status is retried before it becomes an error line.
	RetryMax int `json:"retry_max"`
	// RetryBackoff is the first retry's back-off; it doubles per attempt up
	// to RetryBackoffMax, with jitter.
	RetryBackoff time.Duration `json:"retry_backoff"`
	// RetryBackoffMax caps the retry back-off.
	RetryBackoffMax time.Duration `json:"retry_backoff_max"`
	// RequestTimeout bounds one engine request; a request that runs past it
	// on a healthy engine becomes an error line without a retry.
	RequestTimeout time.Duration `json:"request_timeout"`
	// EngineFailureTimeout is how long the engine may stay unhealthy while
	// the agent holds a lease before the lease is released with reason
	// "engine failure" (so another agent runs the rest).
	EngineFailureTimeout time.Duration `json:"engine_failure_timeout"`
	// DrainTimeout is how long a lease that must stop (drain, shutdown,
	// cancelled batch, engine failure) waits for requests in flight before
	// cancelling them. Lines cancelled this way are not committed: the next
	// agent runs them again.
	DrainTimeout time.Duration `json:"drain_timeout"`
	// ShutdownTimeout bounds the whole shutdown after Run's context ends:
	// draining leases, leaving gossip, stopping the engine. The last
	// shutdownReserve of it (a third, at most 40 s) is kept for leaving
	// gossip and stopping the engine, so a drain that overruns cannot eat
	// the engine's stop grace. The service manager's stop timeout must be
	// longer (the systemd unit's TimeoutStopSec is 150 s).
	ShutdownTimeout time.Duration `json:"shutdown_timeout"`
	// TelemetryInterval is how often GPU and engine figures are sent.
	TelemetryInterval time.Duration `json:"telemetry_interval"`
	// InputIdleTimeout is how long a chunk's input stream may go without a
	// message while the agent waits for one (not while it holds lines back
	// because the engine is busy) before the agent gives up on that
	// coordinator and reads on from another: a coordinator that hangs
	// would otherwise stall the chunk while renewals keep its lease alive.
	InputIdleTimeout time.Duration `json:"input_idle_timeout"`
	// InputBufferBytes bounds the input bytes each held lease reads ahead
	// of the lines it has started. A line larger than the bound is still
	// read, alone.
	InputBufferBytes int64 `json:"input_buffer_bytes"`

	// TLS names the agent's certificate, key and the cluster's CA. Set,
	// the agent talks to coordinators over mutual TLS, serves its HTTP
	// address over HTTPS, and takes its node id from the certificate.
	TLS tlsutil.Files `json:"-"`
	// ClusterName scopes certificate roles and labels gossip (default
	// "global").
	ClusterName string `json:"cluster_name"`
	// GossipKey is the base64 32-byte gossip encryption key; GossipKeyFile
	// names a file holding it. The keyring persists in DataDir, which then
	// wins over both.
	GossipKey     string `json:"gossip_key"`
	GossipKeyFile string `json:"gossip_key_file"`

	// Coordinators, if set, replaces gossip discovery: it returns the RPC
	// addresses (host:port) of the coordinators to talk to. Tests and
	// single-host setups use it; when set, no gossip pool is started.
	Coordinators func() []string `json:"-"`
}

// Default ports and sizes.
const (
	DefaultGossipAddr  = ":8013"
	DefaultMetricsAddr = ":8010"
)

// DefaultConfig returns the defaults every flag starts from.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeID:               host,
		DataDir:              "data/agent",
		GossipAddr:           DefaultGossipAddr,
		MetricsAddr:          DefaultMetricsAddr,
		Concurrency:          64,
		MaxLeases:            2,
		PartLines:            500,
		PartInterval:         2 * time.Second,
		PartBytes:            16 << 20,
		LeaseWait:            10 * time.Second,
		RetryMax:             3,
		RetryBackoff:         200 * time.Millisecond,
		RetryBackoffMax:      5 * time.Second,
		RequestTimeout:       10 * time.Minute,
		EngineFailureTimeout: time.Minute,
		DrainTimeout:         time.Minute,
		ShutdownTimeout:      2 * time.Minute,
		TelemetryInterval:    5 * time.Second,
		InputIdleTimeout:     30 * time.Second,
		InputBufferBytes:     32 << 20,
		ClusterName:          tlsutil.DefaultCluster,
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	var errs []error
	if c.MetricsAddr == "" {
		errs = append(errs, errors.New("metrics address required"))
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise address: %w", err))
		}
	}
	if c.OnlineFromLoopbackOnly {
		adv := c.AdvertiseAddr
		if adv == "" {
			adv = c.MetricsAddr
		}
		if !netutil.IsLoopback(adv) {
			errs = append(errs, fmt.Errorf("online inference from loopback only, but coordinators are told to reach the agent at %q, not a loopback address: their online requests would be refused", adv))
		}
	}
	if c.Coordinators == nil {
		if len(c.Join) == 0 {
			errs = append(errs, errors.New("join addresses required to find coordinators"))
		}
		if c.GossipAddr == "" {
			errs = append(errs, errors.New("gossip address required"))
		}
	}
	positive := map[string]int{"concurrency": c.Concurrency, "max leases": c.MaxLeases, "part lines": c.PartLines}
	for name, v := range positive {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, v))
		}
	}
	if c.InputBufferBytes <= 0 {
		errs = append(errs, fmt.Errorf("input buffer bytes must be positive, got %d", c.InputBufferBytes))
	}
	if c.PartBytes <= 0 {
		errs = append(errs, fmt.Errorf("part bytes must be positive, got %d", c.PartBytes))
	}
	if c.RetryMax < 0 {
		errs = append(errs, fmt.Errorf("retry max must not be negative, got %d", c.RetryMax))
	}
	durations := map[string]time.Duration{
		"part interval": c.PartInterval, "lease wait": c.LeaseWait, "retry backoff": c.RetryBackoff,
		"retry backoff max": c.RetryBackoffMax, "request timeout": c.RequestTimeout,
		"engine failure timeout": c.EngineFailureTimeout, "drain timeout": c.DrainTimeout,
		"shutdown timeout": c.ShutdownTimeout, "telemetry interval": c.TelemetryInterval,
		"input idle timeout": c.InputIdleTimeout,
	}
	for name, d := range durations {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, d))
		}
	}
	if c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("retry backoff max %s is below retry backoff %s", c.RetryBackoffMax, c.RetryBackoff))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}

// nodeID returns the configured node id, or the one kept in DataDir,
// creating it on first use.
func (c *Config) nodeID() (string, error) {
	if c.NodeID != "" {
		return c.NodeID, nil
	}
	if c.DataDir == "" {
		return "", errors.New("agent config: node id or data dir required")
	}
	path := filepath.Join(c.DataDir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read node id %s: %w", path, err)
	}
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return "", fmt.Errorf("create data dir %s: %w", c.DataDir, err)
	}
	id := "agent-" + strings.ToLower(ids.Random(12))
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write node id %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write node id %s: %w", path, err)
	}
	return id, nil
}
