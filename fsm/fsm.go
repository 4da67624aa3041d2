// Package fsm is vbatch's replicated state machine: every change to API
// keys, files, batches, chunks, leases and agents is a command in the raft
// log, applied here. Apply is deterministic: it reads no clock (the leader
// stamps time into each command's envelope), no network and no disk.
package fsm

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// FSM implements raft.FSM over State.
type FSM struct {
	mu      sync.RWMutex
	state   *State
	applied uint64
	watch   chan struct{}
	// term is the raft term of the last command applied, and termStart
	// the FSM's time just before the first command of that term: for a
	// new leader, its predecessors' time free of its own stamps
	// (NowBefore). Neither is replicated state.
	term      uint64
	termStart int64
}

var _ raft.FSM = (*FSM)(nil)

// New returns an FSM with an empty state.
func New() *FSM {
	s := NewState()
	s.reindex()
	return &FSM{state: s, watch: make(chan struct{})}
}

// View runs fn with the state under the read lock. fn must not mutate the
// state or keep references into it (proto.Clone what it keeps), but for
// File records, which are never changed once stored (State.Files).
func (f *FSM) View(fn func(s *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
}

// AppliedIndex is the raft index of the last command applied (or of the
// snapshot restored).
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Watch returns a channel closed when the next raft entry is applied or a
// snapshot restored, for long polls and loops that wait for the state to
// change. It fires for rejected commands too: a proposer waiting for
// AppliedIndex to reach its entry must wake whatever the outcome.
func (f *FSM) Watch() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.watch
}

// Apply applies one raft log entry and returns a *vbatchv1.Result. A
// command the state does not allow is rejected in the Result and changes
// no record. An entry that cannot be decoded is a bug or a newer version's
// command: the node stops rather than diverge from its peers.
//
// Time in the FSM never runs backwards: a command stamped earlier than the
// last one (a new leader with a slower clock) is applied at State.Now.
func (f *FSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	env, cmd, err := Decode(l.Data)
	if err != nil {
		panic(fmt.Sprintf("fsm: cannot apply raft entry %d: %v; refusing to continue so this node does not diverge from its peers", l.Index, err))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if l.Term > f.term {
		f.term, f.termStart = l.Term, f.state.Now
	}
	f.state.Now = max(f.state.Now, env.TimeUnixNano/1e6)
	a := &applyCtx{index: l.Index, nowMs: f.state.Now, s: f.state}
	err = a.apply(cmd)
	if err == nil {
		// Tombstones age out with the FSM's time, which only commands
		// move; a refused command changes no record, this included.
		f.state.pruneTombstones(a.sec())
	}
	if id := batchOf(cmd); id != "" {
		f.state.touchBatch(id)
	}
	f.applied = l.Index
	f.notify()
	return ToResult(l.Index, err)
}

// notify wakes every Watch channel; f.mu must be held for writing.
func (f *FSM) notify() {
	close(f.watch)
	f.watch = make(chan struct{})
}

// applyCtx carries one command's raft index and time to its handler.
type applyCtx struct {
	index uint64
	nowMs int64
	s     *State
}

// sec is the command's time in unix seconds, the unit of every *_at field
// of the OpenAI objects.
func (a *applyCtx) sec() int64 { return a.nowMs / 1000 }

func (a *applyCtx) apply(cmd proto.Message) error {
	switch c := cmd.(type) {
	case *vbatchv1.CreateAPIKey:
		return a.createAPIKey(c)
	case *vbatchv1.RevokeAPIKey:
		return a.revokeAPIKey(c)
	case *vbatchv1.CreateFile:
		return a.createFile(c)
	case *vbatchv1.DeleteFile:
		return a.deleteFile(c)
	case *vbatchv1.CreateBatch:
		return a.createBatch(c)
	case *vbatchv1.FailBatch:
		return a.failBatch(c)
	case *vbatchv1.StartBatch:
		return a.startBatch(c)
	case *vbatchv1.CancelBatch:
		return a.cancelBatch(c)
	case *vbatchv1.BeginFinalize:
		return a.beginFinalize(c)
	case *vbatchv1.FinishBatch:
		return a.finishBatch(c)
	case *vbatchv1.CompactBatch:
		return a.compactBatch(c)
	case *vbatchv1.MergeFileParts:
		return a.mergeFileParts(c)
	case *vbatchv1.RegisterAgent:
		return a.registerAgent(c)
	case *vbatchv1.RemoveAgent:
		return a.removeAgent(c)
	case *vbatchv1.DrainAgent:
		return a.drainAgent(c)
	case *vbatchv1.UndrainAgent:
		return a.undrainAgent(c)
	case *vbatchv1.GrantLease:
		return a.grantLease(c)
	case *vbatchv1.RenewLease:
		return a.renewLease(c)
	case *vbatchv1.CommitPart:
		return a.commitPart(c)
	case *vbatchv1.CompleteChunk:
		return a.completeChunk(c)
	case *vbatchv1.CompletePart:
		return a.completePart(c)
	case *vbatchv1.ReleaseLease:
		return a.releaseLease(c)
	case *vbatchv1.ExpireLeases:
		return a.expireLeases(c)
	case *vbatchv1.ExtendLeases:
		return a.extendLeases(c)
	case *vbatchv1.SetServerIncarnation:
		return a.setServerIncarnation(c)
	}
	// Decode only returns registered types, so this is a programming error.
	panic(fmt.Sprintf("fsm: no handler for %T", cmd))
}

// Snapshot captures the state for raft: the copy is taken under the lock
// and written by Persist outside it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{state: f.state.Clone(), applied: f.applied}, nil
}

// Restore replaces the state with one read from a snapshot. The new state
// is built aside and swapped in only once the whole stream has been read.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, hdr, err := ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("fsm restore: %w", err)
	}
	s.reindex()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
	f.applied = hdr.AppliedIndex
	f.term, f.termStart = 0, 0
	f.notify()
	return nil
}

// NowBefore is the FSM's time (unix ms) as of the last command applied
// from a term before term: for the leader of term, the time its
// predecessors had stamped, whatever it has already stamped itself. It is
// 0 when no command was applied.
func (f *FSM) NowBefore(term uint64) int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.term >= term {
		return f.termStart
	}
	return f.state.Now
}

// batchOf is the batch a command may create or move to another status
// (the only changes the live-batch index follows), "" for any other.
func batchOf(cmd proto.Message) string {
	switch c := cmd.(type) {
	case *vbatchv1.CreateBatch:
		return c.GetBatch().GetId()
	case *vbatchv1.FailBatch, *vbatchv1.StartBatch, *vbatchv1.CancelBatch, *vbatchv1.BeginFinalize,
		*vbatchv1.FinishBatch, *vbatchv1.CompactBatch:
		return c.(interface{ GetBatchId() string }).GetBatchId()
	}
	return ""
}
