package e2e

// A test-owned network for partition tests: a bridge in the root network
// namespace and one network namespace per node, each joined to the bridge
// by a veth pair. The test process stays in the root namespace and reaches
// every node through the bridge's address. Links are cut per direction
// with iproute2 only (no iptables):
//
//   - CutDrop silently drops what one node sends to another, with an
//     `ip rule ... blackhole` on the receiver's ingress, so the sender
//     waits for timeouts as behind a dead switch;
//   - CutReject makes the sender's kernel refuse at once, with an
//     `ip route add unreachable <peer>/32` in the sender's namespace, as
//     behind a router answering "no route to host";
//   - SetLink takes the node's bridge port down or up (flapping).
//
// Everything is created under one short name prefix and deleted in
// t.Cleanup; a run killed before its cleanup ran is swept by the next one.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// CutMode is how a cut link loses packets.
type CutMode string

const (
	// CutDrop drops packets silently at the receiver.
	CutDrop CutMode = "drop"
	// CutReject makes the sender's kernel refuse them (EHOSTUNREACH).
	CutReject CutMode = "reject"
)

// netlabSeq numbers the netlabs of one test binary, so that names differ.
var netlabSeq atomic.Int32

// netlabAlias marks a netlab's bridge with the pid that owns it.
const netlabAlias = "vbatch-e2e-netlab pid "

// Netlab is a bridge and the network namespaces joined to it.
type Netlab struct {
	t      testing.TB
	prefix string // short and unique: every name starts with it
	bridge string
	net    string // "10.X.Y." the /24 the lab uses
	gw     string // the bridge's address, the root namespace's side

	mu    sync.Mutex
	nodes []*NetNode
	cuts  map[[2]*NetNode]CutMode
}

// NetNode is one network namespace on a Netlab.
type NetNode struct {
	Name string // the test's name for it (c1, agent2)
	NS   string // the namespace name, for `ip netns exec`
	IP   string // its address on the bridge's subnet
	host string // the root-namespace end of its veth, a bridge port
}

// NetlabUsable says why network namespaces cannot be used here, or "" when
// they can: the test must run as root with iproute2's `ip` on PATH.
func NetlabUsable() string {
	if os.Geteuid() != 0 {
		return "network partition tests need root (ip netns, veth, bridge)"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "network partition tests need iproute2's ip on PATH"
	}
	return ""
}

// NewNetlab creates a bridge with a fresh /24 in the root namespace and
// registers its teardown. It skips the test when NetlabUsable says so.
func NewNetlab(t testing.TB) *Netlab {
	t.Helper()
	if why := NetlabUsable(); why != "" {
		t.Skip(why)
	}
	sweepNetlabs(t)
	pid := os.Getpid()
	seq := netlabSeq.Add(1)
	n := &Netlab{
		t:      t,
		prefix: fmt.Sprintf("vbt%d%c", pid%1000, 'a'+rune((seq-1)%26)),
		cuts:   map[[2]*NetNode]CutMode{},
	}
	n.bridge = n.prefix + "br"
	net, err := freeSubnet(pid, int(seq))
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	n.net, n.gw = net, net+"1"
	if err := ipCmd("link", "add", n.bridge, "type", "bridge"); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(n.teardown)
	for _, args := range [][]string{
		{"link", "set", n.bridge, "alias", netlabAlias + strconv.Itoa(pid)},
		{"addr", "add", n.gw + "/24", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatalf("netlab: %v", err)
		}
	}
	return n
}

// AddNode creates a namespace joined to the bridge, with loopback up and
// the next free address of the subnet.
func (n *Netlab) AddNode(name string) *NetNode {
	n.t.Helper()
	n.mu.Lock()
	idx := len(n.nodes)
	nd := &NetNode{
		Name: name,
		NS:   fmt.Sprintf("%s-%s", n.prefix, name),
		IP:   fmt.Sprintf("%s%d", n.net, idx+2),
		host: fmt.Sprintf("%sh%d", n.prefix, idx),
	}
	n.nodes = append(n.nodes, nd)
	n.mu.Unlock()
	if idx+2 > 254 {
		n.t.Fatalf("netlab: more than 253 nodes")
	}
	peer := fmt.Sprintf("%sp%d", n.prefix, idx)
	steps := [][]string{
		{"netns", "add", nd.NS},
		{"link", "add", nd.host, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", nd.NS},
		{"link", "set", nd.host, "master", n.bridge, "up"},
		{"-n", nd.NS, "link", "set", peer, "name", "eth0"},
		{"-n", nd.NS, "addr", "add", nd.IP + "/24", "dev", "eth0"},
		{"-n", nd.NS, "link", "set", "eth0", "up"},
		{"-n", nd.NS, "link", "set", "lo", "up"},
		// The local table is consulted at priority 0 by default, before
		// any rule we could add; move it behind the drop rules.
		{"-n", nd.NS, "rule", "add", "pref", "100", "lookup", "local"},
		{"-n", nd.NS, "rule", "del", "pref", "0", "lookup", "local"},
	}
	for _, args := range steps {
		if err := ipCmd(args...); err != nil {
			n.t.Fatalf("netlab node %s: %v", name, err)
		}
	}
	return nd
}

// Exec returns the command line that runs bin with args inside nd.
func (nd *NetNode) Exec(bin string, args ...string) []string {
	return append([]string{"ip", "netns", "exec", nd.NS, bin}, args...)
}

// Do runs fn on an OS thread inside nd's namespace: sockets fn opens
// belong to nd's network. The thread is discarded afterwards.
func (nd *NetNode) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine rather than
		// going back to the scheduler in the wrong namespace.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", nd.NS))
		if err != nil {
			errc <- fmt.Errorf("enter %s: %w", nd.NS, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", nd.NS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// StartProcIn is StartProc with the process inside nd's namespace. The
// process is the one `ip netns exec` execs, so signals reach it directly.
func StartProcIn(t testing.TB, nd *NetNode, dir, name, bin string, args ...string) *Proc {
	t.Helper()
	cmd := nd.Exec(bin, args...)
	return StartProc(t, dir, name, cmd[0], cmd[1:]...)
}

// Cut stops packets from `from` to `to` (one direction) in the given mode.
// Cutting a link that is already cut is an error.
func (n *Netlab) Cut(from, to *NetNode, mode CutMode) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := [2]*NetNode{from, to}
	if _, ok := n.cuts[key]; ok {
		return fmt.Errorf("cut %s->%s: already cut", from.Name, to.Name)
	}
	if err := ipCmd(cutArgs("add", from, to, mode)...); err != nil {
		return fmt.Errorf("cut %s->%s (%s): %w", from.Name, to.Name, mode, err)
	}
	n.cuts[key] = mode
	return nil
}

// Heal restores the link from `from` to `to`; healing an uncut link does
// nothing.
func (n *Netlab) Heal(from, to *NetNode) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.healLocked(from, to)
}

func (n *Netlab) healLocked(from, to *NetNode) error {
	key := [2]*NetNode{from, to}
	mode, ok := n.cuts[key]
	if !ok {
		return nil
	}
	if err := ipCmd(cutArgs("del", from, to, mode)...); err != nil {
		return fmt.Errorf("heal %s->%s (%s): %w", from.Name, to.Name, mode, err)
	}
	delete(n.cuts, key)
	return nil
}

// HealAll restores every cut link and brings every bridge port up.
func (n *Netlab) HealAll() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for key := range n.cuts {
		errs = append(errs, n.healLocked(key[0], key[1]))
	}
	for _, nd := range n.nodes {
		errs = append(errs, ipCmd("link", "set", nd.host, "up"))
	}
	return errors.Join(errs...)
}

// Isolate cuts every link between a node of side a and a node of side b,
// both ways.
func (n *Netlab) Isolate(a, b []*NetNode, mode CutMode) error {
	for _, x := range a {
		for _, y := range b {
			if err := n.Cut(x, y, mode); err != nil {
				return err
			}
			if err := n.Cut(y, x, mode); err != nil {
				return err
			}
		}
	}
	return nil
}

// Cuts is how many one-way cuts are in place.
func (n *Netlab) Cuts() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.cuts)
}

// SetLink takes nd's bridge port down or up: with it down nd reaches
// nobody and nobody reaches nd, and its connections see a dead carrier.
func (n *Netlab) SetLink(nd *NetNode, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if err := ipCmd("link", "set", nd.host, state); err != nil {
		return fmt.Errorf("link %s %s: %w", nd.Name, state, err)
	}
	return nil
}

// cutArgs is the ip command that adds or deletes one cut.
func cutArgs(op string, from, to *NetNode, mode CutMode) []string {
	if mode == CutReject {
		return []string{"-n", from.NS, "route", op, "unreachable", to.IP + "/32"}
	}
	return []string{"-n", to.NS, "rule", op, "pref", "10", "from", from.IP, "blackhole"}
}

// teardown deletes the namespaces (which takes their veths along) and the
// bridge. The test's processes are stopped before: their cleanups were
// registered after this one.
func (n *Netlab) teardown() {
	n.mu.Lock()
	nodes := append([]*NetNode(nil), n.nodes...)
	n.mu.Unlock()
	for _, nd := range nodes {
		if err := ipCmd("netns", "del", nd.NS); err != nil {
			n.t.Errorf("netlab teardown: %v", err)
		}
		// A veth whose namespace is still held open by a process survives
		// the namespace's name; delete its root end too.
		if linkExists(nd.host) {
			_ = ipCmd("link", "del", nd.host)
		}
	}
	if err := ipCmd("link", "del", n.bridge); err != nil {
		n.t.Errorf("netlab teardown: %v", err)
	}
}

// ipCmd runs `ip args...`.
func ipCmd(args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// freeSubnet picks a 10.X.Y.0/24 that no address or route of the root
// namespace uses, starting from one derived from pid and seq.
func freeSubnet(pid, seq int) (string, error) {
	var used bytes.Buffer
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		cmd := exec.Command("ip", args...)
		cmd.Stdout = &used
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
		}
	}
	x := 200 + pid%50
	for i := 0; i < 254; i++ {
		y := 1 + (pid/50+seq*7+i)%254
		net := fmt.Sprintf("10.%d.%d.", x, y)
		if !strings.Contains(used.String(), net) {
			return net, nil
		}
	}
	return "", fmt.Errorf("no free /24 in 10.%d.0.0/16", x)
}

// sweepNetlabs deletes what netlabs of test processes that no longer run
// left behind (a run killed by its timeout skips t.Cleanup).
func sweepNetlabs(t testing.TB) {
	t.Helper()
	links, _ := filepath.Glob("/sys/class/net/vbt*br")
	for _, l := range links {
		alias, err := os.ReadFile(filepath.Join(l, "ifalias"))
		if err != nil || !strings.HasPrefix(string(alias), netlabAlias) {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(alias), netlabAlias)))
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		bridge := filepath.Base(l)
		prefix := strings.TrimSuffix(bridge, "br")
		nss, _ := filepath.Glob("/run/netns/" + prefix + "-*")
		for _, ns := range nss {
			_ = ipCmd("netns", "del", filepath.Base(ns))
		}
		hosts, _ := filepath.Glob("/sys/class/net/" + prefix + "h*")
		for _, h := range hosts {
			_ = ipCmd("link", "del", filepath.Base(h))
		}
		if err := ipCmd("link", "del", bridge); err != nil {
			t.Logf("netlab sweep: %v", err)
		} else {
			t.Logf("netlab sweep: removed %s left by pid %d", bridge, pid)
		}
	}
}
