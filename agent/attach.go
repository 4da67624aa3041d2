package agent

import (
	"context"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// attachLoop keeps an Attach stream open to a coordinator while the agent
// runs. If this process dies, the stream breaks with it and the
// coordinator, finding the agent's port closed, hands its leases on at
// once. A broken stream from a live agent is simply opened again.
func (a *Agent) attachLoop(ctx context.Context) {
	wait := 200 * time.Millisecond
	for ctx.Err() == nil {
		addr, cl, err := a.coords.pick()
		if err == nil {
			start := time.Now()
			var stream *connect.ServerStreamForClient[vbatchv1.AttachResponse]
			stream, err = cl.Attach(ctx, connect.NewRequest(&vbatchv1.AttachRequest{AgentId: a.id}))
			if err == nil {
				for stream.Receive() {
				}
				err = stream.Err()
				_ = stream.Close()
			}
			if time.Since(start) > 10*time.Second {
				wait = 200 * time.Millisecond
			}
			if ctx.Err() == nil {
				a.log.Debug("attach stream ended; attaching again", "coordinator", addr, "err", err)
				a.coords.markBad(addr)
			}
		}
		sleepCtx(ctx, wait)
		wait = min(2*wait, 5*time.Second)
	}
}
