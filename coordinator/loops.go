package coordinator

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
)

// startLoops starts the background loops every coordinator runs.
func (c *Coordinator) startLoops() {
	ctx := c.life
	c.goLoop(func() { c.joinLoop(ctx) })
	c.goLoop(func() { c.bootstrapLoop(ctx) })
	c.goLoop(func() { c.leadershipLoop(ctx) })
	c.goLoop(func() { c.blobLoop(ctx) })
	c.goLoop(func() { c.autopilotCacheLoop(ctx) })
	c.goLoop(func() { c.slowLeaderLoop(ctx) })
	c.goLoop(func() { c.notices.loop(ctx) })
	c.goLoop(func() { c.telemetryPruneLoop(ctx) })
	if c.cfg.BlobScrubInterval > 0 {
		c.goLoop(func() { c.scrub.Run(ctx) })
	}
}

func (c *Coordinator) stopLoops() {
	if c.stop != nil {
		c.stop()
	}
}

func (c *Coordinator) goLoop(fn func()) {
	c.loops.Add(1)
	go func() {
		defer c.loops.Done()
		fn()
	}()
}

// leadershipLoop switches the leader-only work on and off with leadership
// (STYLE: one call from establish/revoke leadership).
func (c *Coordinator) leadershipLoop(ctx context.Context) {
	var run *leaderRun
	defer func() { run.stop() }()
	check := time.NewTicker(250 * time.Millisecond)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.raftNode.raft.LeaderCh():
		case <-check.C:
		}
		isLeader := c.raftNode.raft.State() == raft.Leader
		term := c.raftNode.raft.CurrentTerm()
		switch {
		case isLeader && run != nil && run.term != term:
			// Leadership was lost and won again between two looks: the
			// new term needs its own barrier and lease extension.
			run.stop()
			c.log.Info("leadership won again in a new term; restarting leader loop", "term", term)
			run = c.startLeaderRun(ctx, term)
		case isLeader && run == nil:
			c.log.Info("leadership acquired; starting leader loop", "term", term)
			run = c.startLeaderRun(ctx, term)
		case !isLeader && run != nil:
			run.stop()
			run = nil
			c.clock.shut()
			c.log.Info("leadership lost; leader loop stopped")
		}
	}
}

// leaderRun is one term of leadership's leader loop.
type leaderRun struct {
	term   uint64
	cancel context.CancelFunc
	done   chan struct{}
}

func (c *Coordinator) startLeaderRun(ctx context.Context, term uint64) *leaderRun {
	lctx, cancel := context.WithCancel(ctx)
	r := &leaderRun{term: term, cancel: cancel, done: make(chan struct{})}
	c.startAutopilot(lctx)
	go func() {
		defer close(r.done)
		c.leaderLoop(lctx, term)
	}()
	return r
}

// stop ends the run and waits for it; a nil run is a no-op.
func (r *leaderRun) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
}

// blobLoop repairs missing blobs and deletes unreferenced ones.
func (c *Coordinator) blobLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.Timing.RepairInterval)
	defer t.Stop()
	// The store's content is known at once; what is missing only after a
	// repair pass against a state that has caught up.
	c.blobHealth.update(c.blobs, nil, c.cfg.Timing.RepairInterval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		referenced := c.referencedBlobs()
		if n, err := c.repl.Repair(ctx, referenced); err != nil {
			c.log.Warn("blob repair pass failed", "err", err, "repaired", n)
		} else if n > 0 {
			c.log.Info("blobs repaired", "count", n)
		}
		c.blobHealth.update(c.blobs, referenced, c.cfg.Timing.RepairInterval)
		c.blobGC(ctx)
	}
}

// gcReadTimeout bounds the consistent read that starts a blob GC pass (or
// the repair interval, if shorter).
const gcReadTimeout = 5 * time.Second

// blobGC deletes the local blobs nothing references, judged against a
// state that has caught up with the cluster. A node's FSM can lag far
// behind what the cluster committed: after a restart it holds only its
// last snapshot until a leader tells it the commit index, and a follower
// replaying a backlog is part way through. GC against such a state would
// delete blobs that committed files and result parts reference, perhaps
// the last copies. So a pass first does a consistent read (this node has
// applied everything the leader had committed) and takes the references
// after it; without a leader it skips the pass. Blobs referenced by later
// commits were written or touched since, within the GC grace.
func (c *Coordinator) blobGC(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, min(gcReadTimeout, c.cfg.Timing.RepairInterval))
	err := c.ConsistentRead(rctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			c.metrics.BlobGCSkipped.Inc()
			c.log.Info("blob gc pass skipped: this node cannot confirm its state is current", "err", err)
		}
		return
	}
	if n, err := c.repl.GC(c.referencedBlobs(), c.cfg.Timing.BlobGCGrace); err != nil {
		c.log.Warn("blob gc pass failed", "err", err)
	} else if n > 0 {
		c.log.Info("unreferenced blobs deleted", "count", n)
	}
}
