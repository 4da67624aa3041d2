package blob

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Repair makes one pass over referenced: every blob missing here (never
// received, or quarantined after failing verification) is fetched from a
// peer. It returns how many it fetched; failures do not stop the pass and
// come back joined. A quarantined copy is dropped once a good one is back.
// Each blob's fetch is bounded by RepairTimeout, and a peer that stalls is
// given up after IdleTimeout, so one bad peer cannot hold up the pass (and
// the GC that follows it).
func (r *Replicator) Repair(ctx context.Context, referenced map[string]struct{}) (int, error) {
	shas := make([]string, 0, len(referenced))
	for sha := range referenced {
		if ValidSHA(sha) && !r.Store.Has(sha) {
			shas = append(shas, sha)
		}
	}
	sort.Strings(shas)
	repaired := 0
	var errs []error
	for _, sha := range shas {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("repair stopped: %w", err))
			break
		}
		quarantined := r.Store.Quarantined(sha)
		bctx, cancel := context.WithTimeout(ctx, r.repairTimeout())
		err := r.Fetch(bctx, sha)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("repair blob %s: %w", sha, err))
			continue
		}
		repaired++
		r.log().Info("blob repaired", "sha", sha, "was_quarantined", quarantined)
		if quarantined {
			if err := r.Store.dropQuarantine(sha); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return repaired, errors.Join(errs...)
}

// GC makes one pass deleting local blobs that are not in referenced and
// were last written (or found here by a dedupe or a peer's HEAD) more than
// grace ago, so bytes uploaded but not yet committed to raft survive. It
// also drops quarantined copies of blobs nothing references. It returns how
// many blobs it deleted.
func (r *Replicator) GC(referenced map[string]struct{}, grace time.Duration) (int, error) {
	shas, err := r.Store.List()
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	cutoff := time.Now().Add(-grace)
	deleted := 0
	var errs []error
	for _, sha := range shas {
		if _, ok := referenced[sha]; ok {
			continue
		}
		ok, err := r.Store.deleteIfOlder(sha, cutoff)
		if err != nil {
			errs = append(errs, fmt.Errorf("gc: %w", err))
			continue
		}
		if ok {
			deleted++
			r.log().Debug("unreferenced blob deleted", "sha", sha)
		}
	}
	quarantined, err := r.Store.listQuarantine()
	if err != nil {
		errs = append(errs, fmt.Errorf("gc: %w", err))
	}
	for _, sha := range quarantined {
		if _, ok := referenced[sha]; !ok {
			if err := r.Store.dropQuarantine(sha); err != nil {
				errs = append(errs, fmt.Errorf("gc: %w", err))
			}
		}
	}
	return deleted, errors.Join(errs...)
}
