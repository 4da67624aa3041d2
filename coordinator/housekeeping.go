package coordinator

import (
	"context"
	"sync"
	"time"
)

// Housekeeping cadences: what can wait seconds runs beside the leader's
// look rather than in it, so a backlog (thousands of files expiring at
// once, the history an upgrade lets compaction catch up on) never holds
// up lease expiry, requeues or finalization.
const (
	housekeepEvery = time.Second
	compactEvery   = 10 * time.Second
	// housekeepBatch bounds the commands one sweep of a kind proposes.
	housekeepBatch = 100
)

// housekeeping runs, while this node leads, the leader's slow chores:
// deleting expired files, forgetting long-gone agents, compacting finished
// batches and merging their result files' parts.
func (c *Coordinator) housekeeping(ctx context.Context) {
	// Merging reads and writes whole files: it runs beside the rest, and
	// housekeeping returns only once it has stopped.
	var merging sync.WaitGroup
	merging.Go(func() { c.mergeLoop(ctx) })
	defer merging.Wait()
	absentSince := map[string]time.Time{}
	tick := time.NewTicker(housekeepEvery)
	defer tick.Stop()
	var compacted time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.expireFiles(ctx)
		c.forgetAgents(ctx, absentSince)
		if c.Now().Sub(compacted) >= compactEvery {
			c.compactBatches(ctx)
			compacted = c.Now()
		}
	}
}
