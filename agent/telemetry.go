package agent

import (
	"context"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// telemetryLoop sends a report every TelemetryInterval until ctx ends.
// Telemetry is soft state: a failed report is logged and the next one
// replaces it.
func (a *Agent) telemetryLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.TelemetryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.sendTelemetry(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("send telemetry", "err", err)
		}
	}
}

// sendTelemetry sends one report: fresh GPU figures, engine stats and the
// XID events seen since the last report that got through.
func (a *Agent) sendTelemetry(ctx context.Context) error {
	req := a.telemetryReport(ctx)
	ctx, cancel := context.WithTimeout(ctx, a.cfg.TelemetryInterval)
	defer cancel()
	err := a.coords.call(ctx, "telemetry", 0, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		_, err := c.Telemetry(ctx, connect.NewRequest(req))
		return err
	})
	if err != nil {
		// Keep the XID events for the next report.
		a.requeueXIDs(req.XidEvents)
	}
	return err
}

// telemetryReport gathers a report. Parts that fail are left out and
// logged: a GPU query failing must not hide the engine's figures.
func (a *Agent) telemetryReport(ctx context.Context) *vbatchv1.TelemetryRequest {
	req := &vbatchv1.TelemetryRequest{
		AgentId:      a.id,
		Gpus:         a.discoverGPUs(),
		SentAtUnixMs: time.Now().UnixMilli(),
		XidEvents:    a.takeXIDs(),
	}
	sctx, cancel := context.WithTimeout(ctx, a.cfg.TelemetryInterval)
	defer cancel()
	if st, err := a.eng.Stats(sctx); err != nil {
		// Still say whether the engine serves: coordinators route online
		// requests and isolated chunks by it.
		a.log.Debug("engine stats", "err", err)
		req.Engines = []*vbatchv1.EngineStats{{Model: firstOf(a.models), Loaded: a.eng.Healthy()}}
	} else {
		req.Engines = engineStatsToProto(st)
	}
	return req
}

// discoverGPUs returns the GPUs in wire form; none when there is no
// discoverer or discovery fails.
func (a *Agent) discoverGPUs() []*vbatchv1.GPU {
	if a.gpus == nil {
		return nil
	}
	infos, err := a.gpus.Discover()
	if err != nil {
		a.log.Warn("discover gpus", "err", err)
		return nil
	}
	return gpusToProto(infos)
}

// firstOf returns the first of names, "" when there is none.
func firstOf(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}
