package coordinator

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/coordinator/api"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// The quorum guard of remove-peer. Raft uses a new configuration as soon
// as the leader appends it, so removing a healthy voter while another is
// down (three voters, c2 dead, remove c3) leaves a configuration whose
// majority cannot be reached: the leader cannot commit the change, steps
// down, and the cluster stays leaderless until the dead voter returns or
// peers.json recovery. The leader therefore refuses such a removal unless
// the operator forces it.

// forceRemovalHeader carries remove-peer's force flag from a follower to
// the leader: RemovePeerRequest has no field for it.
const forceRemovalHeader = "Vbatch-Force-Removal"

// Error metadata that carries an *api.UnsafeRemovalError from the leader
// back to the follower that forwarded the removal.
const (
	unsafeIDHeader      = "Vbatch-Unsafe-Removal-Id"
	unsafeVotersHeader  = "Vbatch-Unsafe-Removal-Voters"
	unsafeHealthyHeader = "Vbatch-Unsafe-Removal-Healthy"
)

// removalProbeTimeout bounds the Status calls that check the remaining
// voters' health; a voter that does not answer in time counts as unhealthy.
const removalProbeTimeout = 2 * time.Second

// removalSafety runs on the leader. It returns an *api.UnsafeRemovalError
// when the voters left after removing id would not hold a healthy majority
// of the new configuration.
func (c *Coordinator) removalSafety(ctx context.Context, id string) error {
	var remaining []raft.Server
	for _, s := range c.voters() {
		if string(s.ID) != id {
			remaining = append(remaining, s)
		}
	}
	probe, cancel := context.WithTimeout(ctx, removalProbeTimeout)
	defer cancel()
	healthy := c.healthyVoters(probe, remaining)
	if len(healthy) > len(remaining)/2 {
		return nil
	}
	return &api.UnsafeRemovalError{ID: id, Voters: len(remaining), Healthy: healthy}
}

// healthyVoters returns the ids, sorted, of the servers that are healthy:
// this leader, and every other server that is alive in gossip and whose
// Status says it heard from a leader of this term within autopilot's
// last-contact threshold (as autopilot judges health).
func (c *Coordinator) healthyVoters(ctx context.Context, servers []raft.Server) []string {
	term, _ := strconv.ParseUint(c.raftNode.raft.Stats()["term"], 10, 64)
	threshold := c.cfg.Timing.AutopilotLastContact
	var (
		mu      sync.Mutex
		healthy []string
		wg      sync.WaitGroup
	)
	for _, s := range servers {
		id := string(s.ID)
		if id == c.cfg.NodeID {
			mu.Lock()
			healthy = append(healthy, id)
			mu.Unlock()
			continue
		}
		if _, alive := c.coordinatorMember(id); !alive {
			continue
		}
		addr, ok := c.rpcAddrOf(id)
		if !ok {
			continue
		}
		wg.Go(func() {
			resp, err := c.clusterClient(addr).Status(ctx, connect.NewRequest(&vbatchv1.StatusRequest{}))
			if err != nil {
				return
			}
			ms := resp.Msg.LastContactMs
			if ms < 0 || time.Duration(ms)*time.Millisecond > threshold || resp.Msg.Term != term {
				return
			}
			mu.Lock()
			healthy = append(healthy, id)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(healthy)
	return healthy
}

// unsafeToConnect encodes an *api.UnsafeRemovalError for the follower that
// forwarded the removal; ok is false for any other error.
func unsafeToConnect(err error) (ce *connect.Error, ok bool) {
	var unsafe *api.UnsafeRemovalError
	if !errors.As(err, &unsafe) {
		return nil, false
	}
	ce = connect.NewError(connect.CodeFailedPrecondition, err)
	ce.Meta().Set(unsafeIDHeader, unsafe.ID)
	ce.Meta().Set(unsafeVotersHeader, strconv.Itoa(unsafe.Voters))
	ce.Meta().Set(unsafeHealthyHeader, strings.Join(unsafe.Healthy, ","))
	return ce, true
}

// unsafeFromConnect is unsafeToConnect's inverse; ok is false when ce does
// not carry an unsafe removal.
func unsafeFromConnect(ce *connect.Error) (unsafe *api.UnsafeRemovalError, ok bool) {
	if ce.Code() != connect.CodeFailedPrecondition || ce.Meta().Get(unsafeVotersHeader) == "" {
		return nil, false
	}
	voters, err := strconv.Atoi(ce.Meta().Get(unsafeVotersHeader))
	if err != nil {
		return nil, false
	}
	unsafe = &api.UnsafeRemovalError{ID: ce.Meta().Get(unsafeIDHeader), Voters: voters}
	if h := ce.Meta().Get(unsafeHealthyHeader); h != "" {
		unsafe.Healthy = strings.Split(h, ",")
	}
	return unsafe, true
}
