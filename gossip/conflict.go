package gossip

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/memberlist"
)

// Every coordinator and every agent gossips under its node id, in one name
// space. memberlist keeps the first address it saw under a name and
// refuses any other address claiming it ("Conflicting address") for as
// long as the first is alive, so a second node given the same id would
// otherwise run unseen: the pool answers it, but lists the other node
// under its name. This file makes such a clash loud: every node that sees
// one logs both claimants and counts it (Pool.NameConflicts), and a node
// whose Join finds its own name held elsewhere is refused
// (ErrNameConflict) so that it can stop instead of running hidden.

// ErrNameConflict means that the pool already lists this node's name at
// another address: two nodes were given the same node id.
var ErrNameConflict = errors.New("gossip name is held by another node")

// conflictState is the Pool's record of name conflicts.
type conflictState struct {
	// conflicts counts every conflict memberlist reported to this node.
	conflicts atomic.Int64
	// nameTaken is set while the last Join found this node's name held by
	// another address. Leave then does not announce the departure: the
	// announcement carries only the name, and would tell the pool that the
	// node holding it left.
	nameTaken atomic.Bool

	selfMu sync.Mutex
	// selfSeq counts conflicts over this node's own name; selfOther is the
	// address and role of the last node found holding it.
	selfSeq   uint64
	selfOther string
}

// NameConflicts is how many times this node saw two nodes claim one gossip
// name since it started.
func (p *Pool) NameConflicts() int64 { return p.conflicts.Load() }

// selfConflicts returns how many conflicts over this node's own name were
// seen, and the last other claimant.
func (p *Pool) selfConflicts() (uint64, string) {
	p.selfMu.Lock()
	defer p.selfMu.Unlock()
	return p.selfSeq, p.selfOther
}

// conflictDelegate is memberlist's ConflictDelegate. memberlist calls it
// under its node lock, so it only logs and records.
type conflictDelegate struct{ pool *Pool }

// NotifyConflict is called when a node at other's address claims the name
// that existing holds in this node's view; existing is this node itself
// when the name is ours.
func (d *conflictDelegate) NotifyConflict(existing, other *memberlist.Node) {
	p := d.pool
	p.conflicts.Add(1)
	held, claimed := describeNode(existing), describeNode(other)
	p.logger.Error(fmt.Sprintf("gossip name %s is claimed by two nodes: %s and %s; every node needs its own --node-id",
		existing.Name, held, claimed),
		"name", existing.Name, "held_by", held, "claimed_by", claimed)
	if existing.Name == p.cfg.Name {
		p.selfMu.Lock()
		p.selfSeq++
		p.selfOther = claimed
		p.selfMu.Unlock()
	}
}

// describeNode is a node's address and role, as "10.0.0.2:7946 (agent)".
func describeNode(n *memberlist.Node) string {
	role := "unknown role"
	if m, ok := toMember(n); ok && m.Meta.Role != "" {
		role = m.Meta.Role
	}
	return fmt.Sprintf("%s (%s)", n.Address(), role)
}

// nameConflictError is what Join returns when the pool holds this node's
// name at other.
func (p *Pool) nameConflictError(addrs []string, other string) error {
	return fmt.Errorf("gossip: join %v: name %q is held by %s, this node is %s (%s): %w; "+
		"every coordinator and agent needs its own --node-id (a node that moved to a new address "+
		"may start again once the pool has declared its old address dead)",
		addrs, p.cfg.Name, other, p.Addr(), p.cfg.Meta.Role, ErrNameConflict)
}
