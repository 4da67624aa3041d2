package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/monitoring"
)

// raftNode bundles raft with the stores and transport it owns.
type raftNode struct {
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	// stable is raft's view of store's key-value half (term and vote).
	stable *closingStable
	// logs is the log store raft writes through (the cache over store).
	logs raft.LogStore
	// advertise is the raft address peers dial.
	advertise string
	// closing is closed when close starts (await).
	closing chan struct{}
	// inbound is raft's listener. A node that starts without raft state
	// keeps it shut until it knows the cluster does not count it as a
	// voter that lost its log (incarnation.go).
	inbound *gatedListener
	// incarnation names this node's raft state (incarnation.go).
	incarnation string
}

// logCacheSize is how many recent raft log entries stay in memory.
const logCacheSize = 512

// openRaft opens raft's stores in dataDir/raft and starts the node. It does
// not bootstrap: see bootstrap.go.
//
// Every log write is timed into writes (see slowleader.go).
func openRaft(cfg *Config, f *fsm.FSM, tlsStore *tlsutil.Store, log *slog.Logger, writes *latencies) (*raftNode, error) {
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("raft dir: %w", err)
	}
	// raft logs through the coordinator's slog logger (logger=raft), so
	// its election and replication lines have the fields every other line
	// has and the log pipeline's level and logger labels.
	logger := monitoring.HCLog(log, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 3, logger)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	// Looked at before the bolt store creates raft.db.
	_, statErr := os.Stat(filepath.Join(dir, "raft.db"))
	if err := checkPartialWipe(dir, snaps, errors.Is(statErr, os.ErrNotExist)); err != nil {
		return nil, err
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", dir, err)
	}
	fresh, err := noRaftState(dir, store, snaps)
	if err != nil {
		store.Close()
		return nil, err
	}
	incarnation, err := loadIncarnation(dir, fresh)
	if err != nil {
		store.Close()
		return nil, err
	}
	transport, inbound, err := newTransport(cfg.RaftAddr, tlsStore, logger, !fresh)
	if err != nil {
		store.Close()
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = logger
	rc.HeartbeatTimeout = cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = cfg.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.Timing.CommitTimeout
	// Snapshots every 8k entries keep restarts and catch-up fast; the
	// trailing logs let a briefly absent follower catch up without one.
	rc.SnapshotThreshold = cfg.RaftSnapshotThreshold
	rc.TrailingLogs = cfg.RaftTrailingLogs
	// A server taken out by remove-peer while alive stays a passive
	// follower (it never campaigns outside the configuration), so the
	// leader can add it back later without a restart.
	rc.ShutdownOnRemove = false
	if err := recoverPeers(dir, rc, f, store, snaps, transport, logger); err != nil {
		transport.Close()
		store.Close()
		return nil, err
	}
	// The cache answers the leader's reads of recent entries (each
	// AppendEntries looks up the previous entry's term) without a bolt
	// read transaction; writes still go through and are timed.
	logs, err := raft.NewLogCache(logCacheSize, &timedLogStore{LogStore: store, writes: writes})
	if err != nil {
		transport.Close()
		store.Close()
		return nil, fmt.Errorf("raft log cache: %w", err)
	}
	stable := &closingStable{StableStore: store, closed: make(chan struct{})}
	var rf raft.FSM = f
	if cfg.fsmApplyDelay > 0 {
		rf = slowFSM{FSM: f, delay: cfg.fsmApplyDelay}
	}
	r, err := raft.NewRaft(rc, rf, logs, stable, snaps, transport)
	if err != nil {
		transport.Close()
		store.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	return &raftNode{raft: r, transport: transport, store: store, stable: stable, logs: logs, advertise: string(transport.LocalAddr()),
		closing: make(chan struct{}), inbound: inbound, incarnation: incarnation}, nil
}

// PeersFile is the name, in DataDir/raft, of the lost-quorum recovery file:
// a JSON list of {"id", "address", "non_voter"}, the servers of the new
// configuration (hashicorp/raft's peers.json for protocol version 3).
const PeersFile = "peers.json"

// recoverPeers applies DataDir/raft/peers.json, if present, before raft
// starts: the raft configuration is forced to the file's servers
// (raft.RecoverCluster), then the file is removed so that the next start
// does not recover again. This is how an operator brings back a cluster
// that lost its quorum (docs/operations.md).
func recoverPeers(dir string, rc *raft.Config, f raft.FSM, store *raftboltdb.BoltStore, snaps raft.SnapshotStore,
	transport raft.Transport, logger hclog.Logger) error {
	path := filepath.Join(dir, PeersFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("peers recovery file: %w", err)
	}
	conf, err := raft.ReadConfigJSON(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := raft.RecoverCluster(rc, f, store, store, snaps, transport, conf); err != nil {
		return fmt.Errorf("recover raft cluster from %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove %s after recovery: %w", path, err)
	}
	logger.Warn("raft configuration recovered from peers.json", "servers", len(conf.Servers))
	return nil
}

// await waits for f like f.Error(), but answers raft.ErrRaftShutdown
// once the node starts closing: hashicorp/raft leaves a future unanswered
// for ever when it shuts down with the future's entry still queued for
// the FSM, and whoever waited on it would hang Close.
func (n *raftNode) await(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.closing:
		return raft.ErrRaftShutdown
	}
}

func (n *raftNode) close() error {
	close(n.closing)
	err := n.raft.Shutdown().Error()
	if cerr := n.transport.Close(); err == nil {
		err = cerr
	}
	n.stable.close()
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// newTransport binds raft's TCP transport, over mutual TLS when tlsStore is
// set. An unspecified host advertises this host's private address; port 0
// takes a port from the OS. Unless open, the listener turns every peer
// away until it is opened.
func newTransport(bind string, tlsStore *tlsutil.Store, logger hclog.Logger, open bool) (*raft.NetworkTransport, *gatedListener, error) {
	tcp, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, nil, fmt.Errorf("raft transport on %s: %w", bind, err)
	}
	ln := &gatedListener{Listener: tcp}
	ln.open.Store(open)
	adv, err := netutil.Advertise(ln.Addr().String())
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	advAddr, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("raft advertise address %s: %w", adv, err)
	}
	var stream raft.StreamLayer = &tcpStreamLayer{Listener: ln, advertise: advAddr}
	if tlsStore != nil {
		stream = newTLSStreamLayer(ln, advAddr, tlsStore)
	}
	return raft.NewNetworkTransportWithLogger(stream, 5, 10*time.Second, logger), ln, nil
}

// tcpStreamLayer is raft's StreamLayer over a plain TCP listener.
type tcpStreamLayer struct {
	net.Listener
	advertise net.Addr
}

// Dial connects to a raft peer.
func (t *tcpStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(address), timeout)
}

// Addr is the address peers dial.
func (t *tcpStreamLayer) Addr() net.Addr { return t.advertise }

// closingStable is raft's stable store (its term and vote), which can be
// closed under a transport connection still handling a heartbeat: the
// transport's Close does not wait for its handlers, and raft panics when
// it cannot persist a new term. After close, writes wait for the process
// to end instead; nothing after shutdown may claim to have persisted (a
// term acknowledged but not saved could let the node vote twice after a
// restart). Such a writer is a handler goroutine of the closed transport,
// left blocked with its connection until the process exits.
type closingStable struct {
	raft.StableStore
	mu     sync.RWMutex
	closed chan struct{}
}

// Set stores a key, or waits forever once the store is closing.
func (s *closingStable) Set(key, val []byte) error {
	s.enter()
	defer s.mu.RUnlock()
	return s.StableStore.Set(key, val)
}

// SetUint64 stores a number, or waits forever once the store is closing.
func (s *closingStable) SetUint64(key []byte, val uint64) error {
	s.enter()
	defer s.mu.RUnlock()
	return s.StableStore.SetUint64(key, val)
}

// enter takes the read lock; once the store is closing it never returns
// (the node is shutting down).
func (s *closingStable) enter() {
	s.mu.RLock()
	select {
	case <-s.closed:
		s.mu.RUnlock()
		select {}
	default:
	}
}

// close waits for writes in flight and makes later ones wait forever.
func (s *closingStable) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
}

// slowFSM delays every apply (Config.fsmApplyDelay, for tests).
type slowFSM struct {
	*fsm.FSM
	delay time.Duration
}

// Apply waits, then applies.
func (s slowFSM) Apply(l *raft.Log) interface{} {
	time.Sleep(s.delay)
	return s.FSM.Apply(l)
}
