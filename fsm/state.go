package fsm

import (
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// State is the replicated state. Records are keyed by id. Readers get it
// through FSM.View and must neither mutate nor retain it.
type State struct {
	APIKeys map[string]*vbatchv1.APIKey
	Files   map[string]*vbatchv1.File
	Batches map[string]*vbatchv1.Batch
	Agents  map[string]*vbatchv1.Agent
	// Now is the time, in unix milliseconds, of the last applied command.
	Now int64
}

// NewState returns an empty state.
func NewState() *State {
	return &State{
		APIKeys: map[string]*vbatchv1.APIKey{},
		Files:   map[string]*vbatchv1.File{},
		Batches: map[string]*vbatchv1.Batch{},
		Agents:  map[string]*vbatchv1.Agent{},
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
	return c
}

// Equal reports whether two states hold the same records.
func (s *State) Equal(o *State) bool {
	if len(s.APIKeys) != len(o.APIKeys) || len(s.Files) != len(o.Files) ||
		len(s.Batches) != len(o.Batches) || len(s.Agents) != len(o.Agents) {
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
	return true
}

// IsTerminal reports whether a batch in status s can never change again.
func IsTerminal(s vbatchv1.BatchStatus) bool {
	switch s {
	case vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED, vbatchv1.BatchStatus_BATCH_STATUS_FAILED,
		vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED, vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED:
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
	const (
		validating = vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING
		inProgress = vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS
		finalizing = vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING
		cancelling = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING
		completed  = vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED
		failed     = vbatchv1.BatchStatus_BATCH_STATUS_FAILED
		expired    = vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED
		cancelled  = vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED
	)
	switch from {
	case validating:
		return to == inProgress || to == failed || to == cancelled || to == expired
	case inProgress:
		return to == finalizing || to == cancelling || to == expired
	case finalizing:
		return to == completed || to == expired
	case cancelling:
		return to == cancelled || to == expired
	}
	return false
}

// LiveLease reports whether a chunk holds a lease that has not expired at
// nowMs (unix milliseconds).
func LiveLease(c *vbatchv1.Chunk, nowMs int64) bool {
	return c.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED && c.Lease != nil && c.Lease.ExpiresAt > nowMs
}

// UsedByLiveBatch reports whether a non-terminal batch reads or writes the
// file.
func UsedByLiveBatch(s *State, fileID string) bool {
	for _, b := range s.Batches {
		if IsTerminal(b.Status) {
			continue
		}
		if b.InputFileId == fileID || b.OutputFileId == fileID || b.ErrorFileId == fileID {
			return true
		}
	}
	return false
}

// ReferencedBlobs returns every blob a file or a committed part refers to.
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
	for _, b := range s.Batches {
		for _, c := range b.Chunks {
			for _, p := range c.Parts {
				add(p.Output)
				add(p.Errors)
			}
		}
	}
	return refs
}
