package coordinator

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
)

// Coordinators and agents gossip under their node ids in one name space,
// and gossip keeps one node per name. An agent given a coordinator's id
// either hides that coordinator from the pool (it cannot rejoin after a
// restart, and autopilot removes it from raft) or is itself taken for the
// coordinator, so its leases are expired as those of a dead agent. So a
// coordinator refuses to register an agent under a coordinator's id, and
// every lookup of a gossip member by name asks for the role it means
// (gossip.Pool.MemberWithRole).

// errAgentIDTaken is the cause of a Register refused because the agent's
// id is a coordinator's.
var errAgentIDTaken = errors.New("agent id is a coordinator's node id")

// checkAgentID refuses, with AlreadyExists, an agent id that is a
// coordinator's node id: this node's, a server's of the raft configuration
// (voters, non-voters, and servers that are down), or a coordinator's in
// gossip (one that has not joined raft yet).
func (c *Coordinator) checkAgentID(id string) error {
	holder := ""
	switch {
	case id == c.cfg.NodeID:
		holder = "this coordinator"
	case c.raftNode != nil:
		f := c.raftNode.raft.GetConfiguration()
		if f.Error() != nil {
			break
		}
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == id {
				holder = fmt.Sprintf("the coordinator at raft address %s", s.Address)
				break
			}
		}
	}
	if holder == "" && c.pool != nil {
		if m, ok := c.coordinatorMember(id); ok {
			holder = fmt.Sprintf("the coordinator at gossip address %s", m.Addr)
		}
	}
	if holder == "" {
		return nil
	}
	return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf(
		"agent %s: %w: it is the node id of %s; every coordinator and agent needs its own --node-id",
		id, errAgentIDTaken, holder))
}

// coordinatorMember returns the coordinator that gossip lists alive under
// node id id; an agent under that name is not it.
func (c *Coordinator) coordinatorMember(id string) (gossip.Member, bool) {
	return c.pool.MemberWithRole(id, gossip.RoleCoordinator)
}

// gossipNameConflicts is the count behind vbatch_gossip_name_conflicts_total.
func (c *Coordinator) gossipNameConflicts() int64 {
	if c.pool == nil {
		return 0
	}
	return c.pool.NameConflicts()
}
