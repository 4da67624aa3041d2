// Package gossip is vbatch's membership layer: coordinators and agents join
// one hashicorp/memberlist pool and describe themselves in node metadata.
// Coordinators use it to find each other for bootstrap and to learn which
// agents are alive; agents use it to find coordinators.
//
// The pool can be encrypted with a rotatable keyring (Config.Keys,
// Config.KeyringFile, Pool.KeyringOp) and fenced by a cluster label
// (Config.Label), as Consul and Serf do, so that neither an outsider nor a
// neighbouring cluster can join or read it.
package gossip

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vbatch/vbatch/internal/netutil"
)

// Roles a member can have.
const (
	RoleCoordinator = "coordinator"
	RoleAgent       = "agent"
)

// Meta is what a member tells the pool about itself. memberlist limits it to
// 512 bytes encoded, so it stays small: details live in raft.
type Meta struct {
	Role     string   `json:"r"`
	RPCAddr  string   `json:"rpc,omitempty"`
	HTTPAddr string   `json:"http,omitempty"`
	RaftAddr string   `json:"raft,omitempty"`
	Expect   int      `json:"exp,omitempty"`
	Models   []string `json:"m,omitempty"`
	GPUs     int      `json:"g,omitempty"`
	// FSM is a coordinator's command level (fsm.Level): the newest raft
	// commands it applies. Absent means 1.
	FSM int `json:"fsm,omitempty"`
}

// Member is a live member of the pool.
type Member struct {
	Name string
	Addr string
	Meta Meta
}

// Event is a membership change.
type Event struct {
	Member Member
	// Kind is "join", "leave" (left or declared dead) or "update".
	Kind string
}

// Config configures a Pool.
type Config struct {
	// Name is the member's unique name (the node id).
	Name string
	// BindAddr is host:port for memberlist's TCP and UDP listeners.
	BindAddr string
	Meta     Meta
	// ProbeInterval is the failure detector period; 0 means 500ms. A dead
	// member is declared after a few probe intervals.
	ProbeInterval time.Duration
	// OnEvent, if set, is called (from memberlist's goroutine; do not block)
	// for every membership change.
	OnEvent func(Event)
	Logger  *slog.Logger

	// Keys is the initial gossip keyring, each KeySize bytes (see ParseKey);
	// the first is the primary key, used to encrypt, and all are tried to
	// decrypt. Nil means no encryption: then the pool neither sends nor
	// accepts encrypted gossip, so encrypted and plain nodes never mix.
	// With keys, everything in and out must be encrypted
	// (GossipVerifyIncoming and GossipVerifyOutgoing), and a node without a
	// key on this ring cannot join.
	Keys [][]byte
	// KeyringFile, if set, is where the keyring is persisted (mode 0600)
	// after every change made by KeyringOp, so a restarted node comes back
	// with the rotated keys. When the file exists at Start it takes
	// precedence over Keys (which are then ignored with a warning), as
	// Consul's keyring file overrides its encrypt option; when it does not,
	// Keys seed it. An existing file turns encryption on even with no Keys.
	KeyringFile string
	// Label is the cluster label (e.g. the cluster name). memberlist
	// prefixes every packet and stream with it and, with encryption,
	// authenticates it, so members with a different label, or none, are
	// refused and two clusters sharing a network never merge. At most 255
	// bytes; empty means no label.
	Label string
	// GossipToTheDeadTime is how long memberlist keeps a dead member and
	// gossips to it, after which it forgets it: a member cut off longer
	// than this is never contacted again unless someone joins it. 0 means
	// 60 probe intervals (30 s at the default probe interval, memberlist's
	// LAN default).
	GossipToTheDeadTime time.Duration
	// WrapTransport, if set, wraps the network transport memberlist uses
	// (tests cut a member off the network with it). Nil in production.
	WrapTransport TransportWrapper
}

// Pool is this node's membership in the gossip pool.
type Pool struct {
	list   *memberlist.Memberlist
	cfg    Config
	logger *slog.Logger

	mu   sync.Mutex
	meta []byte
	left bool

	// nodes are copies of the live memberlist nodes, by name; see nodeList.
	nodesMu sync.Mutex
	nodes   map[string]*memberlist.Node

	keyringState
	conflictState
}

// Start creates the memberlist and its listeners. It does not join anyone:
// call Join.
func Start(cfg Config) (*Pool, error) {
	host, port, err := netutil.SplitPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr = host
	mc.BindPort = port
	if host == "0.0.0.0" {
		adv, err := netutil.PrivateIP()
		if err != nil {
			return nil, err
		}
		mc.AdvertiseAddr = adv
	}
	mc.AdvertisePort = port
	probe := cfg.ProbeInterval
	if probe == 0 {
		probe = 500 * time.Millisecond
	}
	mc.ProbeInterval = probe
	mc.ProbeTimeout = probe / 2
	mc.GossipInterval = probe / 5
	mc.PushPullInterval = 10 * probe
	mc.SuspicionMult = 3
	mc.TCPTimeout = 2 * time.Second
	mc.GossipToTheDeadTime = cfg.GossipToTheDeadTime
	if mc.GossipToTheDeadTime == 0 {
		mc.GossipToTheDeadTime = 60 * probe
	}
	// A node that comes back at a new address after it was declared dead
	// (re-addressed, or its port changed) may take its name back after a
	// few probe intervals rather than be refused as a conflict until the
	// dead entry is forgotten.
	mc.DeadNodeReclaimTime = 10 * probe
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	mc.Logger = log.New(&slogWriter{logger: logger.With("logger", "memberlist")}, "", 0)
	mc.Label = cfg.Label
	keyring, err := setupKeyring(cfg, logger)
	if err != nil {
		return nil, err
	}
	if keyring != nil {
		mc.Keyring = keyring
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	p := &Pool{cfg: cfg, logger: logger.With("logger", "gossip")}
	p.keyring = keyring
	p.nodes = map[string]*memberlist.Node{}
	p.pending = map[string]*pendingOp{}
	p.inbox = make(chan []byte, 64)
	p.done = make(chan struct{})
	if p.meta, err = p.announceMeta(cfg.Meta); err != nil {
		return nil, err
	}
	mc.Delegate = &delegate{pool: p}
	mc.Events = &events{pool: p}
	mc.Conflict = &conflictDelegate{pool: p}
	if err := setupTransport(mc, cfg); err != nil {
		return nil, err
	}
	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start on %s: %w", cfg.BindAddr, err)
	}
	p.list = list
	go p.runKeyringWorker()
	// memberlist picked the port when BindAddr asked for port 0.
	return p, nil
}

// Join contacts the given gossip addresses; it succeeds if any answered.
// It fails with ErrNameConflict when the pool answers that it already
// lists this node's name at another address: another node has this node's
// id, and this one would be invisible to the pool. The caller should stop.
// A node that restarts on its old address keeps its name (memberlist
// refutes the old entry), so only a different address conflicts.
func (p *Pool) Join(addrs []string) (int, error) {
	seq, _ := p.selfConflicts()
	n, err := p.list.Join(addrs)
	// memberlist merges the answering member's view within Join, so a
	// conflict over our name is reported before it returns.
	if after, other := p.selfConflicts(); after != seq {
		p.nameTaken.Store(true)
		return n, p.nameConflictError(addrs, other)
	}
	if err != nil && n == 0 {
		return 0, fmt.Errorf("gossip: join %v: %w", addrs, err)
	}
	p.nameTaken.Store(false)
	return n, nil
}

// Members returns the live members, this node included, sorted by name.
func (p *Pool) Members() []Member {
	var out []Member
	for _, n := range p.nodeList() {
		if m, ok := toMember(n); ok {
			out = append(out, m)
		}
	}
	return out
}

// nodeList returns this pool's copies of the live memberlist nodes, sorted
// by name. memberlist.Members hands out pointers to nodes it rewrites in
// place under its own lock, so reading those races; the copies are taken
// in the event delegate, which memberlist calls under that lock, as Serf
// keeps its own member map.
func (p *Pool) nodeList() []*memberlist.Node {
	p.nodesMu.Lock()
	defer p.nodesMu.Unlock()
	out := make([]*memberlist.Node, 0, len(p.nodes))
	for _, n := range p.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// MembersWithRole returns the live members that have role.
func (p *Pool) MembersWithRole(role string) []Member {
	var out []Member
	for _, m := range p.Members() {
		if m.Meta.Role == role {
			out = append(out, m)
		}
	}
	return out
}

// MemberWithRole returns the live member named name if it has role.
// Coordinators and agents share the pool's name space, so a caller that
// means a coordinator (or an agent) asks for that role: a node of the
// other kind given the same id must not pass for it.
func (p *Pool) MemberWithRole(name, role string) (Member, bool) {
	m, ok := p.Member(name)
	if !ok || m.Meta.Role != role {
		return Member{}, false
	}
	return m, true
}

// Member returns the live member named name, whatever its role; see
// MemberWithRole.
func (p *Pool) Member(name string) (Member, bool) {
	p.nodesMu.Lock()
	n := p.nodes[name]
	p.nodesMu.Unlock()
	if n == nil {
		return Member{}, false
	}
	return toMember(n)
}

// UpdateMeta replaces this node's metadata and gossips it.
func (p *Pool) UpdateMeta(m Meta) error {
	b, err := p.announceMeta(m)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.meta = b
	p.mu.Unlock()
	return p.list.UpdateNode(5 * time.Second)
}

// Addr is the address other members reach this one at.
func (p *Pool) Addr() string {
	n := p.list.LocalNode()
	return n.Address()
}

// Leave announces departure and stops the listeners; it only stops them
// after a Join failed with ErrNameConflict. Calling it again is a no-op
// (memberlist itself panics on a second Leave).
func (p *Pool) Leave(timeout time.Duration) error {
	p.mu.Lock()
	left := p.left
	p.left = true
	p.mu.Unlock()
	if left {
		return nil
	}
	defer p.stopKeyring()
	var err error
	if p.nameTaken.Load() {
		// The pool lists our name at another node: a leave message, which
		// names no address, would mark that node as gone.
		p.logger.Warn("not announcing leave: the pool lists this node's name at another address", "name", p.cfg.Name)
	} else {
		err = p.list.Leave(timeout)
	}
	if serr := p.list.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// announceMeta encodes m as encodeMeta does, with a warning when models
// had to be left out (the agent's raft registration, which online routing
// and leasing use, keeps them all).
func (p *Pool) announceMeta(m Meta) ([]byte, error) {
	b, dropped, err := fitMeta(m)
	if err == nil && dropped > 0 {
		p.logger.Warn("models left out of this node's gossip announcement, which is limited to 512 bytes; its registration lists them all",
			"announced", len(m.Models)-dropped, "left_out", dropped)
	}
	return b, err
}

// encodeMeta encodes m within memberlist's limit, leaving out models from
// the end of the list until it fits.
func encodeMeta(m Meta) ([]byte, error) {
	b, _, err := fitMeta(m)
	return b, err
}

// fitMeta is encodeMeta, also saying how many models it left out.
func fitMeta(m Meta) ([]byte, int, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, 0, fmt.Errorf("gossip: encode meta: %w", err)
	}
	dropped := 0
	for len(b) > memberlist.MetaMaxSize && len(m.Models) > 0 {
		m.Models = m.Models[:len(m.Models)-1]
		dropped++
		b, _ = json.Marshal(m)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, 0, fmt.Errorf("gossip: meta is %d bytes, limit %d", len(b), memberlist.MetaMaxSize)
	}
	return b, dropped, nil
}

func toMember(n *memberlist.Node) (Member, bool) {
	var m Meta
	if err := json.Unmarshal(n.Meta, &m); err != nil {
		return Member{}, false
	}
	return Member{Name: n.Name, Addr: n.Address(), Meta: m}, true
}

type delegate struct{ pool *Pool }

func (d *delegate) NodeMeta(limit int) []byte {
	d.pool.mu.Lock()
	defer d.pool.mu.Unlock()
	return d.pool.meta
}
func (d *delegate) NotifyMsg(b []byte)                         { d.pool.notifyMsg(b) }
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type events struct{ pool *Pool }

func (e *events) emit(n *memberlist.Node, kind string) {
	c := *n
	c.Addr = slices.Clone(n.Addr)
	c.Meta = bytes.Clone(n.Meta)
	e.pool.nodesMu.Lock()
	if kind == "leave" {
		delete(e.pool.nodes, c.Name)
	} else {
		e.pool.nodes[c.Name] = &c
	}
	e.pool.nodesMu.Unlock()
	if e.pool.cfg.OnEvent == nil {
		return
	}
	if m, ok := toMember(&c); ok {
		e.pool.cfg.OnEvent(Event{Member: m, Kind: kind})
	}
}
func (e *events) NotifyJoin(n *memberlist.Node)   { e.emit(n, "join") }
func (e *events) NotifyLeave(n *memberlist.Node)  { e.emit(n, "leave") }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.emit(n, "update") }

// slogWriter adapts memberlist's log.Logger output to slog, keeping its
// [LEVEL] prefix as the level.
type slogWriter struct{ logger *slog.Logger }

func (w *slogWriter) Write(b []byte) (int, error) {
	msg := string(b)
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[INFO]": slog.LevelInfo} {
		if i := strings.Index(msg, prefix); i >= 0 {
			level = l
			msg = msg[i+len(prefix):]
			break
		}
	}
	w.logger.Log(context.Background(), level, strings.Trim(msg, " :\n"))
	return len(b), nil
}
