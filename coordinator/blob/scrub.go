package blob

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// scrubStateFile keeps a scrub's progress in the store's directory, so a
// pass over a large store goes on where it was after a restart instead of
// starting again (and a coordinator restarted more often than the
// interval still scrubs).
const scrubStateFile = "scrub.json"

// scrubSaveEvery bounds how often a pass records its progress.
const scrubSaveEvery = 10 * time.Second

// scrubReadSize is the most a pass reads before it paces itself.
const scrubReadSize = 256 << 10

// Scrubber reads every blob of a store through the verifying reader, at a
// bounded rate, one pass per interval. A copy that rotted on disk (a
// flipped bit, a torn sector, a truncated file) is found and moved to
// quarantine while the other coordinators' copies are still good, and the
// repair pass then fetches a good one from a peer; without a scrub, a blob
// that nobody reads (an input whose batch finished, results not yet
// downloaded) could rot on every node before anyone noticed. Reads by
// clients and agents verify what they touch as well; the scrub covers the
// rest.
type Scrubber struct {
	// Store is the store to scrub.
	Store *Store
	// Rate is the most bytes per second a pass reads; 0 or less reads as
	// fast as the disk and CPU allow.
	Rate int64
	// Interval is the time from the start of one pass to the start of the
	// next.
	Interval time.Duration
	// Log receives a line per corrupt copy and per pass; nil discards.
	Log *slog.Logger

	scrubbed atomic.Int64 // bytes read by passes
	lastPass atomic.Int64 // unix seconds the last complete pass ended
	running  atomic.Int64 // unix seconds the pass under way began; 0 between passes
}

// scrubState is the progress scrub.json records.
type scrubState struct {
	// Started is when the current (or, between passes, the last) pass
	// began, in unix seconds; 0 before the first.
	Started int64 `json:"started"`
	// Cursor is the last blob the current pass verified; passes go in
	// sha order.
	Cursor string `json:"cursor,omitempty"`
	// Running is true while a pass is under way.
	Running bool `json:"running"`
	// LastPass is when the last complete pass ended, in unix seconds.
	LastPass int64 `json:"last_pass,omitempty"`
}

// PassStats are the figures of one pass.
type PassStats struct {
	// Blobs and Bytes are what the pass verified (good and corrupt).
	Blobs int
	Bytes int64
	// Corrupt lists the blobs found corrupt and quarantined.
	Corrupt []string
	// Failed counts blobs that could not be read for another reason (an
	// I/O error); they are tried again by the next pass.
	Failed int
}

// ScrubbedBytes is the bytes passes have read since the Scrubber was made.
func (sc *Scrubber) ScrubbedBytes() int64 { return sc.scrubbed.Load() }

// PassRunningSince is when the pass under way began (kept across
// restarts), or the zero time between passes.
func (sc *Scrubber) PassRunningSince() time.Time {
	if u := sc.running.Load(); u > 0 {
		return time.Unix(u, 0)
	}
	return time.Time{}
}

// LastPass is when the last complete pass ended (kept across restarts),
// or the zero time if none has.
func (sc *Scrubber) LastPass() time.Time {
	if u := sc.lastPass.Load(); u > 0 {
		return time.Unix(u, 0)
	}
	return time.Time{}
}

func (sc *Scrubber) log() *slog.Logger {
	if sc.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return sc.Log
}

// Run scrubs until ctx ends: a pass under way when the process stopped
// goes on from its cursor; otherwise the next pass starts Interval after
// the last one started.
func (sc *Scrubber) Run(ctx context.Context) {
	st, err := sc.load()
	if err != nil {
		sc.log().Warn("blob scrub: progress unreadable; starting a new pass", "err", err)
		st = scrubState{}
	}
	sc.lastPass.Store(st.LastPass)
	for {
		if !st.Running {
			if st.Started > 0 {
				wait := time.Until(time.Unix(st.Started, 0).Add(sc.Interval))
				if !sleepCtx(ctx, wait) {
					return
				}
			}
			st = scrubState{Started: time.Now().Unix(), Running: true, LastPass: st.LastPass}
			sc.save(st)
		}
		sc.running.Store(st.Started)
		stats, err := sc.pass(ctx, &st)
		if err != nil {
			if ctx.Err() != nil {
				sc.save(st)
				return
			}
			// The store could not be listed: try again after a while, from
			// the cursor reached.
			sc.log().Warn("blob scrub pass interrupted", "err", err, "cursor", st.Cursor)
			sc.save(st)
			if !sleepCtx(ctx, time.Minute) {
				return
			}
			continue
		}
		st.Running, st.Cursor, st.LastPass = false, "", time.Now().Unix()
		sc.lastPass.Store(st.LastPass)
		sc.running.Store(0)
		sc.save(st)
		sc.log().Info("blob scrub pass done", "blobs", stats.Blobs, "bytes", stats.Bytes,
			"corrupt", len(stats.Corrupt), "failed", stats.Failed,
			"took", time.Since(time.Unix(st.Started, 0)).Round(time.Second))
	}
}

// Pass verifies every blob in the store once, at the Scrubber's rate. It
// keeps no progress: Run's passes do.
func (sc *Scrubber) Pass(ctx context.Context) (PassStats, error) {
	var st scrubState
	return sc.pass(ctx, &st)
}

// pass verifies the blobs after st.Cursor in sha order, moving the cursor
// (and saving it now and then) as it goes.
func (sc *Scrubber) pass(ctx context.Context, st *scrubState) (PassStats, error) {
	var stats PassStats
	shas, err := sc.Store.List()
	if err != nil {
		return stats, fmt.Errorf("blob scrub: %w", err)
	}
	p := pacer{rate: sc.Rate, start: time.Now()}
	saved := time.Now()
	for _, sha := range shas {
		if sha <= st.Cursor {
			continue
		}
		n, err := sc.verify(ctx, sha, &p)
		stats.Bytes += n
		switch {
		case ctx.Err() != nil:
			return stats, ctx.Err()
		case errors.Is(err, ErrNotFound):
			// Deleted since the listing.
		case errors.Is(err, ErrCorrupt):
			stats.Blobs++
			stats.Corrupt = append(stats.Corrupt, sha)
			sc.log().Warn("blob scrub: stored copy is corrupt; quarantined, the repair pass fetches a good copy from a peer", "sha", sha, "err", err)
		case err != nil:
			stats.Failed++
			sc.log().Warn("blob scrub: cannot read blob", "sha", sha, "err", err)
		default:
			stats.Blobs++
		}
		st.Cursor = sha
		if time.Since(saved) >= scrubSaveEvery {
			sc.save(*st)
			saved = time.Now()
		}
	}
	return stats, nil
}

// verify reads one blob whole through the verifying reader (which
// quarantines a corrupt copy) and returns the bytes read.
func (sc *Scrubber) verify(ctx context.Context, sha string, p *pacer) (int64, error) {
	r, err := sc.Store.Open(sha)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	bufp := sc.Store.bufPool.Get().(*[]byte)
	defer sc.Store.bufPool.Put(bufp)
	buf := (*bufp)[:scrubReadSize]
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		sc.scrubbed.Add(int64(n))
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if err := p.wait(ctx, n); err != nil {
			return total, err
		}
	}
}

// load reads the recorded progress; a store without one has none.
func (sc *Scrubber) load() (scrubState, error) {
	var st scrubState
	b, err := os.ReadFile(filepath.Join(sc.Store.dir, scrubStateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read scrub progress: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return scrubState{}, fmt.Errorf("parse scrub progress: %w", err)
	}
	return st, nil
}

// save records progress through a temp file and a rename. It is not
// fsynced: losing it in a crash only repeats part of a pass.
func (sc *Scrubber) save(st scrubState) {
	b, err := json.Marshal(st)
	if err == nil {
		tmp := filepath.Join(sc.Store.tmpDir, scrubStateFile)
		if err = os.WriteFile(tmp, b, 0o640); err == nil {
			err = os.Rename(tmp, filepath.Join(sc.Store.dir, scrubStateFile))
		}
	}
	if err != nil {
		sc.log().Warn("blob scrub: cannot record progress", "err", err)
	}
}

// pacerSlack is the most a pass that fell behind its rate may read at full
// speed to catch up.
const pacerSlack = time.Second

// pacer holds reads to a rate in bytes per second, averaged from start.
type pacer struct {
	rate  int64
	start time.Time
	done  int64
}

// wait accounts for n more bytes and sleeps until they are within the
// rate; it returns ctx's error if ctx ends first.
func (p *pacer) wait(ctx context.Context, n int) error {
	p.done += int64(n)
	if p.rate <= 0 {
		return ctx.Err()
	}
	due := p.start.Add(time.Duration(float64(p.done) / float64(p.rate) * float64(time.Second)))
	if behind := time.Since(due); behind > pacerSlack {
		// Reads were slower than the rate for a while (a busy disk):
		// catch up at most pacerSlack's worth at full speed, not the whole
		// shortfall.
		p.start = p.start.Add(behind - pacerSlack)
		due = due.Add(behind - pacerSlack)
	}
	if !sleepCtx(ctx, time.Until(due)) {
		return ctx.Err()
	}
	return nil
}

// sleepCtx waits d (nothing if d <= 0) and reports whether ctx is still
// live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
