package coordinator

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// shareTimeout bounds one hand-off of telemetry to a peer.
const shareTimeout = 2 * time.Second

// shareTelemetry hands an agent's report to every other live coordinator,
// in the background: telemetry is soft state, a lost hand-off is replaced
// by the agent's next report a few seconds later.
func (c *Coordinator) shareTelemetry(r *vbatchv1.TelemetryRequest, receivedAt time.Time) {
	msg := &vbatchv1.ShareTelemetryRequest{Report: r, ReceivedAtUnixMs: receivedAt.UnixMilli()}
	for _, m := range c.pool.MembersWithRole(gossip.RoleCoordinator) {
		if m.Name == c.cfg.NodeID || m.Meta.RPCAddr == "" {
			continue
		}
		client := c.clusterClient(m.Meta.RPCAddr)
		go func(peer string) {
			ctx, cancel := context.WithTimeout(context.Background(), shareTimeout)
			defer cancel()
			if _, err := client.ShareTelemetry(ctx, connect.NewRequest(msg)); err != nil {
				c.log.Debug("telemetry hand-off failed", "peer", peer, "agent", r.AgentId, "err", err)
			}
		}(m.Name)
	}
}

// ShareTelemetry stores a report a peer coordinator received.
func (s *clusterService) ShareTelemetry(ctx context.Context, req *connect.Request[vbatchv1.ShareTelemetryRequest]) (*connect.Response[vbatchv1.ShareTelemetryResponse], error) {
	r := req.Msg.GetReport()
	if r.GetAgentId() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("agent id required"))
	}
	s.c.agents.store(r, time.UnixMilli(req.Msg.ReceivedAtUnixMs))
	return connect.NewResponse(&vbatchv1.ShareTelemetryResponse{}), nil
}
