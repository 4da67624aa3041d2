package fsm

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// This file holds test helpers for this package and others: they build
// states by applying commands as committed raft entries, without raft.

// MustApply encodes cmd stamped with now and applies it to f as raft entry
// index. It fails the test if cmd cannot be encoded; a rejected command is
// a normal Result for the caller to check (FromResult turns it into an
// error).
func MustApply(t testing.TB, f *FSM, index uint64, now time.Time, cmd proto.Message) *vbatchv1.Result {
	t.Helper()
	data, err := Encode(cmd, now)
	if err != nil {
		t.Fatalf("encode %T: %v", cmd, err)
	}
	res, ok := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(*vbatchv1.Result)
	if !ok {
		t.Fatalf("apply %T: no Result", cmd)
	}
	return res
}

// Harness drives an FSM as a raft log would: each command gets the next
// index and the harness clock, which moves only when the test says so.
type Harness struct {
	FSM *FSM
	// Index is the raft index of the last applied command; a GrantLease
	// just applied has this as its fencing token.
	Index uint64
	// Clock is the time stamped on the next command.
	Clock time.Time
}

// NewHarness returns a harness over an empty FSM with the clock at
// 2023-11-14T22:13:20Z.
func NewHarness() *Harness {
	return &Harness{FSM: New(), Clock: time.Unix(1_700_000_000, 0).UTC()}
}

// Apply applies cmd at the next index and returns its rejection, if any.
func (h *Harness) Apply(t testing.TB, cmd proto.Message) error {
	t.Helper()
	h.Index++
	return FromResult(MustApply(t, h.FSM, h.Index, h.Clock, cmd))
}

// MustApply applies cmd at the next index, fails the test if it is
// rejected, and returns the index.
func (h *Harness) MustApply(t testing.TB, cmd proto.Message) uint64 {
	t.Helper()
	if err := h.Apply(t, cmd); err != nil {
		t.Fatalf("apply %T at index %d: %v", cmd, h.Index, err)
	}
	return h.Index
}

// Advance moves the clock forward.
func (h *Harness) Advance(d time.Duration) { h.Clock = h.Clock.Add(d) }

// State returns a deep copy of the FSM's state.
func (h *Harness) State() *State {
	var s *State
	h.FSM.View(func(st *State) { s = st.Clone() })
	return s
}
