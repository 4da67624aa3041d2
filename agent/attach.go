package agent

import (
	"context"
	"sync"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// attachFirstWait bounds how long lease workers wait for the first Attach
// stream before taking leases anyway (a coordinator too old to answer
// Attach at once must not keep an agent idle).
const attachFirstWait = 5 * time.Second

// Waits between Attach attempts: short, since an agent without a stream
// dies unnoticed for seconds longer.
const (
	attachRetryMin = 100 * time.Millisecond
	attachRetryMax = time.Second
)

// attachLoop keeps an Attach stream open to a coordinator while the agent
// runs. If this process dies, the stream breaks with it and the
// coordinator, finding the agent's port closed, hands its leases on at
// once. A broken stream from a live agent is simply opened again. The
// coordinator answers an Attach at once; the first answer marks the agent
// attached, which its lease workers wait for (see waitAttached).
func (a *Agent) attachLoop(ctx context.Context) {
	wait := attachRetryMin
	var once sync.Once
	for ctx.Err() == nil {
		addr, cl, err := a.coords.pick()
		if err == nil {
			var stream *connect.ServerStreamForClient[vbatchv1.AttachResponse]
			stream, err = cl.Attach(ctx, connect.NewRequest(&vbatchv1.AttachRequest{AgentId: a.id}))
			if err == nil {
				for stream.Receive() {
					once.Do(func() {
						a.log.Debug("attached", "coordinator", addr)
						close(a.attached)
					})
					wait = attachRetryMin
				}
				err = stream.Err()
				_ = stream.Close()
			}
			if ctx.Err() == nil {
				a.log.Debug("attach stream ended; attaching again", "coordinator", addr, "err", err)
				a.coords.markBad(addr)
			}
		}
		sleepCtx(ctx, wait)
		wait = min(2*wait, attachRetryMax)
	}
}

// waitAttached waits until the first Attach stream is up, at most d, or
// until the agent stops taking leases: a lease taken before then would be
// held by an agent whose death only gossip could notice.
func (a *Agent) waitAttached(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-a.attached:
	case <-a.stopCtx.Done():
	case <-t.C:
		a.log.Warn("no Attach stream yet; taking leases anyway", "waited", d)
	}
}
