package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Merging bounds: a sweep every mergeEvery merges files until it has
// written mergeSweepBytes (one file at least), so a backlog is worked off
// without the leader's disk doing nothing else.
const (
	mergeEvery      = 10 * time.Second
	mergeSweepBytes = 256 << 20
	// mergeRetryAfter is how long a file whose merge failed is left
	// alone, so that one bad file does not hold up the others.
	mergeRetryAfter = 10 * time.Minute
	// mergeFreeFactor is how many times a file's size the data dir must
	// have free before it is merged: its parts and the merged blob share
	// the disk until the GC removes the parts.
	mergeFreeFactor = 3
)

// mergeLoop merges, while this node leads, the parts of result files older
// than BatchCompactAfter into one blob each: a result file is written as
// one part per committed chunk range (two blobs on every voter's disk, with
// their sidecars, per part), so without merging the inodes a cluster uses
// grow with every part its users keep, and every download opens each part.
func (c *Coordinator) mergeLoop(ctx context.Context) {
	tick := time.NewTicker(mergeEvery)
	defer tick.Stop()
	failed := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.mergeSweep(ctx, failed)
	}
}

// mergeSweep merges due files, oldest first, up to mergeSweepBytes,
// skipping those in failed (file id → when it failed) until
// mergeRetryAfter has passed.
func (c *Coordinator) mergeSweep(ctx context.Context, failed map[string]time.Time) {
	after := c.cfg.BatchCompactAfter
	if after <= 0 || !c.clusterAtFSMLevel(fsm.LevelMergeFileParts) {
		return
	}
	cutoff := c.Now().Add(-after).Unix()
	var due []*vbatchv1.File
	c.fsm.View(func(st *fsm.State) {
		for _, f := range st.Files {
			if len(f.Parts) > 1 && f.CreatedAt <= cutoff && !fsm.FileExpired(f, st.Now/1000) {
				due = append(due, proto.Clone(f).(*vbatchv1.File))
			}
		}
	})
	sort.Slice(due, func(i, j int) bool {
		return due[i].CreatedAt < due[j].CreatedAt || (due[i].CreatedAt == due[j].CreatedAt && due[i].Id < due[j].Id)
	})
	now := time.Now()
	for id, at := range failed {
		if now.Sub(at) >= mergeRetryAfter {
			delete(failed, id)
		}
	}
	var written int64
	for _, f := range due {
		if written >= mergeSweepBytes || ctx.Err() != nil {
			return
		}
		if _, ok := failed[f.Id]; ok {
			continue
		}
		if free, err := diskFree(c.cfg.DataDir); err == nil && free < uint64(mergeFreeFactor*f.Bytes) {
			continue // too big for the space left; smaller files may fit
		}
		if err := c.mergeFile(ctx, f); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, fsm.ErrNotFound) && !errors.Is(err, fsm.ErrConflict) {
				c.log.Warn("merge result file parts; retrying later", "file_id", f.Id, "parts", len(f.Parts), "retry_after", mergeRetryAfter.String(), "err", err)
			}
			failed[f.Id] = now
			continue
		}
		written += f.Bytes
		c.metrics.FilesMerged.Inc()
	}
}

// mergeFile writes f's parts, read and verified in order, as one blob,
// copies it to a majority of the voters and commits the swap. The parts'
// blobs are then referenced by nothing and the GC deletes them after its
// grace (readers that opened the file before hold them meanwhile).
func (c *Coordinator) mergeFile(ctx context.Context, f *vbatchv1.File) error {
	rc, err := c.OpenFile(ctx, f)
	if err != nil {
		return fmt.Errorf("read parts: %w", err)
	}
	ref, err := c.blobs.Ingest(rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("write merged blob: %w", err)
	}
	if ref.Bytes != f.Bytes {
		return fmt.Errorf("merged %d bytes, the file has %d", ref.Bytes, f.Bytes)
	}
	if _, err := c.replicate(ctx, ref.Sha256); err != nil {
		return err
	}
	// Copying a large file may have taken longer than the GC grace: hold
	// the copies again (as an upload does) just before the swap commits.
	if _, err := c.HoldBlob(ctx, ref.Sha256); err != nil {
		return err
	}
	if _, err := c.applyAsLeader(ctx, &vbatchv1.MergeFileParts{FileId: f.Id, Parts: f.Parts, Merged: ref}); err != nil {
		return fmt.Errorf("commit merge: %w", err)
	}
	c.log.Info("merged result file parts", "file_id", f.Id, "parts", len(f.Parts), "bytes", f.Bytes, "sha256", ref.Sha256)
	return nil
}
