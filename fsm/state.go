package fsm

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// State is the replicated state. Records are keyed by id. Readers get it
// through FSM.View and must neither mutate nor retain it, but for Files.
type State struct {
	APIKeys map[string]*vbatchv1.APIKey
	// Files are never changed once stored: a command that changes a file
	// stores a new record (MergeFileParts), so a reader may keep a *File
	// past View and read it there (never write it), e.g. to sort a list
	// outside the lock.
	Files   map[string]*vbatchv1.File
	Batches map[string]*vbatchv1.Batch
	Agents  map[string]*vbatchv1.Agent
	// FileTombstones keeps, by file id, the list position of the files
	// deleted with keep_position (FSM level 9) in the last
	// FileTombstoneTTL, so a list cursor naming one keeps its place.
	FileTombstones map[string]*vbatchv1.FileTombstone
	// Incarnations maps a coordinator's node id to the incarnation of
	// the raft state it was last seen holding (FSM level 11).
	Incarnations map[string]string
	// Now is the FSM's clock in unix milliseconds: the latest envelope
	// time applied. It never runs backwards, and it is what lease expiry
	// and batch expiry are judged against.
	Now int64

	// live indexes the batches that have not ended, so the paths that run
	// many times a second (lease polls, the leader's look, quotas) walk the
	// work in flight rather than every batch ever run. It is derived, never
	// snapshotted: the FSM builds it for its state (New, Restore) and
	// Apply keeps it; a state built otherwise (a clone, a test's) has none
	// and is scanned in full.
	live map[string]*vbatchv1.Batch
	// tombs is FileTombstones oldest deletion first, so pruning looks at
	// its head only. Derived and kept as live is (tombsIndexed says
	// whether there is one); it may hold a tombstone a later delete of
	// the same id replaced, which pruning skips.
	tombs        []*vbatchv1.FileTombstone
	tombsIndexed bool
}

// FileTombstoneTTL is how long a deleted file's list position is kept:
// pruned on the first command applied at or after deleted_at plus this.
const FileTombstoneTTL = 24 * time.Hour

// LiveBatches calls fn for every batch that has not ended, in no order,
// until fn returns false.
func (s *State) LiveBatches(fn func(b *vbatchv1.Batch) bool) {
	if s.live == nil {
		for _, b := range s.Batches {
			if !IsTerminal(b.Status) && !fn(b) {
				return
			}
		}
		return
	}
	for _, b := range s.live {
		if !fn(b) {
			return
		}
	}
}

// reindex builds the live-batch index from the batches and the
// tombstones' deletion order from the tombstones.
func (s *State) reindex() {
	s.live = make(map[string]*vbatchv1.Batch)
	for id, b := range s.Batches {
		if !IsTerminal(b.Status) {
			s.live[id] = b
		}
	}
	s.tombs = slices.SortedFunc(maps.Values(s.FileTombstones), func(x, y *vbatchv1.FileTombstone) int {
		return cmp.Or(cmp.Compare(x.DeletedAt, y.DeletedAt), cmp.Compare(x.Id, y.Id))
	})
	s.tombsIndexed = true
}

// addTombstone records a deleted file's position. Tombstones come in
// deletion order: every command's time is at or after the last one's.
func (s *State) addTombstone(t *vbatchv1.FileTombstone) {
	s.FileTombstones[t.Id] = t
	if s.tombsIndexed {
		s.tombs = append(s.tombs, t)
	}
}

// pruneTombstones drops the tombstones deleted FileTombstoneTTL or more
// before nowSec. With the index it looks at the oldest only and stops at
// the first not due: O(1) when none is, O(1) per tombstone dropped. A
// state without the index (a clone, a test's) is scanned in full.
func (s *State) pruneTombstones(nowSec int64) {
	if len(s.FileTombstones) == 0 {
		return
	}
	cutoff := nowSec - int64(FileTombstoneTTL/time.Second)
	if !s.tombsIndexed {
		maps.DeleteFunc(s.FileTombstones, func(_ string, t *vbatchv1.FileTombstone) bool { return t.DeletedAt <= cutoff })
		return
	}
	for len(s.tombs) > 0 && s.tombs[0].DeletedAt <= cutoff {
		t := s.tombs[0]
		s.tombs[0] = nil // let the dropped tombstone go before append copies
		s.tombs = s.tombs[1:]
		if s.FileTombstones[t.Id] == t {
			delete(s.FileTombstones, t.Id)
		}
	}
}

// touchBatch brings the index up to date for one batch a command may have
// created or moved.
func (s *State) touchBatch(id string) {
	if s.live == nil {
		return // no index: scanned in full
	}
	if b, ok := s.Batches[id]; ok && !IsTerminal(b.Status) {
		s.live[id] = b
	} else {
		delete(s.live, id)
	}
}

// Short names for the statuses, used throughout the package.
const (
	statusValidating = vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING
	statusInProgress = vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS
	statusFinalizing = vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING
	statusCancelling = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING
	statusCompleted  = vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED
	statusFailed     = vbatchv1.BatchStatus_BATCH_STATUS_FAILED
	statusExpired    = vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED
	statusCancelled  = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED

	chunkPending = vbatchv1.ChunkState_CHUNK_STATE_PENDING
	chunkLeased  = vbatchv1.ChunkState_CHUNK_STATE_LEASED
	chunkDone    = vbatchv1.ChunkState_CHUNK_STATE_DONE
)

// NewState returns an empty state.
func NewState() *State {
	return &State{
		APIKeys: map[string]*vbatchv1.APIKey{},
		Files:   map[string]*vbatchv1.File{},
		Batches: map[string]*vbatchv1.Batch{},
		Agents:  map[string]*vbatchv1.Agent{},

		FileTombstones: map[string]*vbatchv1.FileTombstone{},
		Incarnations:   map[string]string{},
	}
}

// Clone returns a deep copy.
func (s *State) Clone() *State {
	c := NewState()
	c.Now = s.Now
	for k, v := range s.APIKeys {
		c.APIKeys[k] = proto.Clone(v).(*vbatchv1.APIKey)
	}
	for k, v := range s.Files {
		c.Files[k] = proto.Clone(v).(*vbatchv1.File)
	}
	for k, v := range s.Batches {
		c.Batches[k] = proto.Clone(v).(*vbatchv1.Batch)
	}
	for k, v := range s.Agents {
		c.Agents[k] = proto.Clone(v).(*vbatchv1.Agent)
	}
	for k, v := range s.FileTombstones {
		c.FileTombstones[k] = proto.Clone(v).(*vbatchv1.FileTombstone)
	}
	maps.Copy(c.Incarnations, s.Incarnations)
	return c
}

// Equal reports whether two states hold the same records (proto.Equal on
// each); Now is not compared.
func (s *State) Equal(o *State) bool {
	if len(s.APIKeys) != len(o.APIKeys) || len(s.Files) != len(o.Files) ||
		len(s.Batches) != len(o.Batches) || len(s.Agents) != len(o.Agents) ||
		len(s.FileTombstones) != len(o.FileTombstones) || !maps.Equal(s.Incarnations, o.Incarnations) {
		return false
	}
	for k, v := range s.APIKeys {
		if !proto.Equal(v, o.APIKeys[k]) {
			return false
		}
	}
	for k, v := range s.Files {
		if !proto.Equal(v, o.Files[k]) {
			return false
		}
	}
	for k, v := range s.Batches {
		if !proto.Equal(v, o.Batches[k]) {
			return false
		}
	}
	for k, v := range s.Agents {
		if !proto.Equal(v, o.Agents[k]) {
			return false
		}
	}
	for k, v := range s.FileTombstones {
		if !proto.Equal(v, o.FileTombstones[k]) {
			return false
		}
	}
	return true
}

// IsTerminal reports whether a batch in status s can never change again.
func IsTerminal(s vbatchv1.BatchStatus) bool {
	switch s {
	case statusCompleted, statusFailed, statusExpired, statusCancelled:
		return true
	}
	return false
}

// ValidTransition is the one rule of batch status changes: every move goes
// up the numeric order of BatchStatus, never out of a terminal status, and
// only along OpenAI's lifecycle: validating → in_progress → finalizing →
// completed; validating → failed; validating → cancelled (nothing ran yet);
// in_progress → cancelling → cancelled; and expired from any live status.
func ValidTransition(from, to vbatchv1.BatchStatus) bool {
	switch from {
	case statusValidating:
		return to == statusInProgress || to == statusFailed || to == statusCancelled || to == statusExpired
	case statusInProgress:
		return to == statusFinalizing || to == statusCancelling || to == statusExpired
	case statusFinalizing:
		return to == statusCompleted || to == statusExpired
	case statusCancelling:
		return to == statusCancelled || to == statusExpired
	}
	return false
}

// LiveLease reports whether a chunk holds a lease that has not expired at
// nowMs (unix milliseconds).
func LiveLease(c *vbatchv1.Chunk, nowMs int64) bool {
	return c.State == chunkLeased && c.Lease != nil && c.Lease.ExpiresAt > nowMs
}

// UsedByLiveBatch reports whether a non-terminal batch reads or writes the
// file.
func UsedByLiveBatch(s *State, fileID string) bool {
	used := false
	s.LiveBatches(func(b *vbatchv1.Batch) bool {
		used = b.InputFileId == fileID || b.OutputFileId == fileID || b.ErrorFileId == fileID
		return !used
	})
	return used
}

// FileExpired reports whether f has an expiry (OpenAI's expires_after)
// that has passed at nowSec (unix seconds). An expired file reads as
// deleted; the leader deletes it once no live batch uses it.
func FileExpired(f *vbatchv1.File, nowSec int64) bool {
	return f.ExpiresAt > 0 && nowSec >= f.ExpiresAt
}

// ReferencedBlobs returns every blob a file, or a committed part of a
// batch still running, refers to. A terminal batch's parts are not counted:
// its output and error files list every one of them (finishBatch), so once
// the user deletes those files, or they expire, the bytes can go.
func ReferencedBlobs(s *State) map[string]struct{} {
	refs := map[string]struct{}{}
	add := func(r *vbatchv1.BlobRef) {
		if r != nil && r.Sha256 != "" {
			refs[r.Sha256] = struct{}{}
		}
	}
	for _, f := range s.Files {
		for _, p := range f.Parts {
			add(p)
		}
	}
	s.LiveBatches(func(b *vbatchv1.Batch) bool {
		for _, c := range b.Chunks {
			for _, p := range c.Parts {
				add(p.Output)
				add(p.Errors)
			}
		}
		return true
	})
	return refs
}
