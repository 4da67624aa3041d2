package coordinator

import (
	"context"
	"errors"
	"sort"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// compactBatches proposes, on the leader, CompactBatch for batches that
// ended more than BatchCompactAfter ago: their chunk records (every lease
// and part) are most of the replicated state and of every snapshot, and
// nothing reads them once the result files exist. It waits until every
// server applies the command (a rolling upgrade), oldest batches first.
func (c *Coordinator) compactBatches(ctx context.Context) {
	after := c.cfg.BatchCompactAfter
	if after <= 0 || !c.clusterAtFSMLevel(fsm.LevelCompactBatch) {
		return
	}
	cutoff := c.Now().Add(-after).Unix()
	type ended struct {
		id string
		at int64
	}
	var due []ended
	c.fsm.View(func(s *fsm.State) {
		for id, b := range s.Batches {
			if at := fsm.EndedAt(b); at > 0 && at <= cutoff && !b.Compacted {
				due = append(due, ended{id, at})
			}
		}
	})
	sort.Slice(due, func(i, j int) bool { return due[i].at < due[j].at || (due[i].at == due[j].at && due[i].id < due[j].id) })
	// A cluster upgraded with a long history catches up a bounded number
	// per sweep, oldest first.
	for _, d := range due[:min(len(due), housekeepBatch)] {
		if _, err := c.applyAsLeader(ctx, &vbatchv1.CompactBatch{BatchId: d.id}); err != nil && !errors.Is(err, fsm.ErrNotFound) {
			c.log.Warn("compact finished batch", "batch_id", d.id, "err", err)
			return
		}
	}
}
