package coordinator

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// attachKeepalive is how often Attach sends a keepalive down the stream.
const attachKeepalive = 5 * time.Second

// probeTimeout bounds the connection attempt that confirms an agent gone.
const probeTimeout = time.Second

// Attach holds a live agent's stream open. When the stream breaks from the
// agent's side, the agent's HTTP port is probed: a refused connection means
// the process is gone (a killed process's sockets close at once, and its
// port refuses), so its live leases are expired now rather than when gossip
// declares it dead seconds later. A probe that times out (a partition, a
// frozen host) proves nothing and leaves the agent to gossip and the lease
// TTL. Wrongly expiring a live agent's leases (a firewall that rejects
// rather than drops, say) costs only its work in flight: its later results
// carry stale tokens and are refused.
func (s *agentService) Attach(ctx context.Context, req *connect.Request[vbatchv1.AttachRequest], stream *connect.ServerStream[vbatchv1.AttachResponse]) error {
	id := req.Msg.AgentId
	if id == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("agent id required"))
	}
	if err := s.authorizeAgent(ctx, id); err != nil {
		return err
	}
	tick := time.NewTicker(attachKeepalive)
	defer tick.Stop()
	// Answer at once, so the agent knows it is attached before it takes
	// leases (and the response's headers go out now, not at the first
	// keepalive).
	if err := stream.Send(&vbatchv1.AttachResponse{}); err != nil {
		go s.confirmGone(id)
		return err
	}
	s.c.log.Debug("agent attached", "agent", id)
	for {
		select {
		case <-s.c.life.Done():
			// This coordinator is shutting down: the agent attaches to
			// another one; nothing is wrong with it.
			return connect.NewError(connect.CodeUnavailable, errors.New("coordinator shutting down"))
		case <-ctx.Done():
			s.c.log.Debug("agent's attach stream broke", "agent", id, "err", ctx.Err())
			go s.confirmGone(id)
			return ctx.Err()
		case <-tick.C:
			if err := stream.Send(&vbatchv1.AttachResponse{}); err != nil {
				s.c.log.Debug("agent's attach stream broke", "agent", id, "err", err)
				go s.confirmGone(id)
				return err
			}
		}
	}
}

// confirmGone probes agent id's port and, if the connection is refused,
// expires every live lease it holds. The leases are looked up after the
// probe, so one granted while the probe ran is not missed.
func (s *agentService) confirmGone(id string) {
	var addr string
	s.c.fsm.View(func(st *fsm.State) {
		if a := st.Agents[id]; a != nil {
			addr = a.RpcAddr
		}
	})
	if addr == "" || !refusedSoon(s.c.life, addr) {
		s.c.log.Debug("agent's port does not refuse connections; leaving it to gossip and its lease TTL", "agent", id, "addr", addr)
		return
	}
	refs := s.liveLeases(id)
	if len(refs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.c.life, 10*time.Second)
	defer cancel()
	s.c.log.Warn("agent gone: its stream broke and its port refuses connections; handing its leases on", "agent", id, "leases", len(refs))
	if _, err := s.c.Apply(ctx, &vbatchv1.ExpireLeases{Leases: refs, Reason: "agent process gone"}); err != nil && !errors.Is(err, fsm.ErrStaleToken) {
		s.c.log.Warn("expire leases of a gone agent", "agent", id, "err", err)
	}
}

// liveLeases lists the live leases agent id holds.
func (s *agentService) liveLeases(id string) []*vbatchv1.LeaseRef {
	var refs []*vbatchv1.LeaseRef
	s.c.fsm.View(func(st *fsm.State) {
		st.LiveBatches(func(b *vbatchv1.Batch) bool {
			for _, ch := range b.Chunks {
				if ch.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED && ch.Lease != nil && ch.Lease.AgentId == id {
					refs = append(refs, &vbatchv1.LeaseRef{BatchId: b.Id, Chunk: ch.Index, Token: ch.Lease.Token})
				}
			}
			return true
		})
	})
	return refs
}

// probeDelays space the probes of a broken stream's agent: a killed
// process's connections and listener close at nearly the same moment, and
// a probe that races the listener's close still connects.
var probeDelays = []time.Duration{0, 50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond}

// refusedSoon reports whether addr refuses connections within the probes
// of probeDelays.
func refusedSoon(ctx context.Context, addr string) bool {
	for _, d := range probeDelays {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
		}
		if refused(addr) {
			return true
		}
	}
	return false
}

// refused reports whether a TCP connection to addr is actively refused.
func refused(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, probeTimeout)
	if err == nil {
		conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
