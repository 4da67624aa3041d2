package fsm

import (
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TB is the part of testing.TB the harness needs (rapid.T has it too).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Harness applies commands to an FSM the way raft would, with increasing
// indexes and a controllable clock. Tests in this and other packages use
// it to drive the state machine without a raft cluster.
type Harness struct {
	FSM   *FSM
	Index uint64
	Clock time.Time
}

// NewHarness returns a Harness over a new FSM, its clock at a fixed time.
func NewHarness() *Harness {
	return &Harness{FSM: New(), Clock: time.Unix(1_800_000_000, 0)}
}

// Apply encodes cmd, applies it at the next index and returns the error
// the FSM answered (nil on success).
func (h *Harness) Apply(t TB, cmd proto.Message) error {
	t.Helper()
	data, err := Encode(cmd, h.Clock)
	if err != nil {
		t.Fatalf("encode %T: %v", cmd, err)
	}
	h.Index++
	res, ok := h.FSM.Apply(&raft.Log{Index: h.Index, Type: raft.LogCommand, Data: data}).(*vbatchv1.Result)
	if !ok {
		t.Fatalf("apply %T: result is not a Result", cmd)
	}
	return FromResult(res)
}

// MustApply applies cmd and fails the test if the FSM refused it.
func (h *Harness) MustApply(t TB, cmd proto.Message) {
	t.Helper()
	if err := h.Apply(t, cmd); err != nil {
		t.Fatalf("apply %T: %v", cmd, err)
	}
}

// Advance moves the clock forward.
func (h *Harness) Advance(d time.Duration) { h.Clock = h.Clock.Add(d) }

// State returns a deep copy of the current state.
func (h *Harness) State() *State {
	var s *State
	h.FSM.View(func(st *State) { s = st.Clone() })
	return s
}
