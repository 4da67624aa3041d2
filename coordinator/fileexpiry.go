package coordinator

import (
	"context"
	"errors"
	"sort"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// expireFiles deletes, on the leader, the files whose expiry (OpenAI's
// expires_after) has passed, once no live batch uses them: an agent still
// reads a running batch's input from its file. The API shows an expired
// file as deleted from the moment it expires; this reclaims the record and,
// through the blob GC, the bytes.
func (c *Coordinator) expireFiles(ctx context.Context) {
	now := c.Now().Unix()
	var expired []string
	c.fsm.View(func(s *fsm.State) {
		for id, f := range s.Files {
			if fsm.FileExpired(f, now) && !fsm.UsedByLiveBatch(s, id) {
				expired = append(expired, id)
			}
		}
	})
	sort.Strings(expired)
	// From level 9 the delete keeps the file's list position, so a client
	// paging with it as the cursor goes on after it.
	keep := c.clusterAtFSMLevel(fsm.LevelFileTombstones)
	for _, id := range expired[:min(len(expired), housekeepBatch)] {
		_, err := c.applyAsLeader(ctx, &vbatchv1.DeleteFile{Id: id, KeepPosition: keep})
		switch {
		case err == nil:
			c.log.Info("expired file deleted", "file", id)
		case errors.Is(err, fsm.ErrNotFound), errors.Is(err, fsm.ErrConflict):
			// Deleted meanwhile, or a batch started on it: the next sweep.
		default:
			c.log.Warn("expired file not deleted", "file", id, "err", err)
		}
	}
}
