package coordinator

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
)

// A leader whose disk is slow holds up every commit: it syncs each entry
// to its own log before it counts, and heartbeats touch no disk, so the
// followers never replace it (docs/reliability.md, "Slow fsync"). The
// leader therefore watches its own log writes and, when they stay slow
// while a follower's are several times faster, hands leadership to that
// follower.
const (
	// slowLeaderChecks is how many checks in a row, slowLeaderEvery apart,
	// must find the leader slow before it steps aside.
	slowLeaderChecks = 3
	slowLeaderEvery  = 500 * time.Millisecond
	// slowLeaderFactor is how much faster a follower's log writes must be
	// to take over.
	slowLeaderFactor = 4
	// slowLeaderCooldown is the least time between two hand-overs, so two
	// slow disks never toss leadership back and forth.
	slowLeaderCooldown = time.Minute
	// minLogWrites is the fewest recent writes a median is trusted on.
	minLogWrites = 3
)

// peerDisk is a follower's last reported log write figure.
type peerDisk struct {
	ms   float64
	addr string
	at   time.Time
}

// notePeerDisk records what a server's status said of its log writes.
func (c *Coordinator) notePeerDisk(id, raftAddr string, ms float64) {
	c.peerDiskMu.Lock()
	defer c.peerDiskMu.Unlock()
	if c.peerDisks == nil {
		c.peerDisks = make(map[string]peerDisk)
	}
	c.peerDisks[id] = peerDisk{ms: ms, addr: raftAddr, at: time.Now()}
}

// slowLeaderTarget decides, from the leader's recent median log write
// (mine, over n writes) and the followers' figures, whether to hand
// leadership away and to whom. Only figures newer than fresh count, and
// only voters (voters holds their ids).
func slowLeaderTarget(mine time.Duration, n int, threshold time.Duration, peers map[string]peerDisk, voters map[string]bool, now time.Time, fresh time.Duration) (id string, ok bool) {
	if threshold <= 0 || n < minLogWrites || mine < threshold {
		return "", false
	}
	mineMs := float64(mine.Microseconds()) / 1000
	best := -1.0
	for pid, p := range peers {
		if !voters[pid] || now.Sub(p.at) > fresh || p.ms < 0 || p.ms*slowLeaderFactor > mineMs {
			continue
		}
		if best < 0 || p.ms < best || (p.ms == best && pid < id) {
			id, best = pid, p.ms
		}
	}
	return id, id != ""
}

// slowLeaderLoop runs on every coordinator and acts while it leads.
func (c *Coordinator) slowLeaderLoop(ctx context.Context) {
	threshold := c.cfg.SlowDiskThreshold
	if threshold <= 0 {
		return
	}
	tick := time.NewTicker(slowLeaderEvery)
	defer tick.Stop()
	streak := 0
	var lastMove time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := c.raftNode.raft
		if r.State() != raft.Leader {
			streak = 0
			continue
		}
		now := time.Now()
		mine, n := c.logWrites.median(now, logWriteWindow)
		voters := map[string]bool{}
		for _, s := range c.voters() {
			voters[string(s.ID)] = true
		}
		c.peerDiskMu.Lock()
		target, ok := slowLeaderTarget(mine, n, threshold, c.peerDisks, voters, now, 3*c.cfg.Timing.AutopilotInterval+time.Second)
		var addr string
		if ok {
			addr = c.peerDisks[target].addr
		}
		c.peerDiskMu.Unlock()
		if !ok {
			streak = 0
			continue
		}
		streak++
		if streak < slowLeaderChecks || now.Sub(lastMove) < slowLeaderCooldown {
			continue
		}
		c.log.Warn("this leader's disk is slow: handing leadership to a follower whose disk is faster",
			"log_write_median", mine, "to", target)
		if err := c.raftNode.await(r.LeadershipTransferToServer(raft.ServerID(target), raft.ServerAddress(addr))); err != nil {
			c.log.Warn("hand leadership away from a slow disk", "to", target, "err", err)
			continue
		}
		c.metrics.SlowDiskTransfers.Inc()
		lastMove, streak = now, 0
	}
}
