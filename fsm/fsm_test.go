package fsm

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestApplyReturnsResultWithIndex(t *testing.T) {
	f := New()
	now := time.Unix(1_700_000_000, 0)
	res := MustApply(t, f, 5, now, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a"}})
	if res.Index != 5 || res.Code != "" {
		t.Fatalf("result = %v", res)
	}
	res = MustApply(t, f, 6, now, &vbatchv1.DrainAgent{AgentId: "ghost"})
	if res.Index != 6 || res.Code != "not_found" || res.Message == "" {
		t.Fatalf("rejection result = %v", res)
	}
	if f.AppliedIndex() != 6 {
		t.Fatalf("applied index %d, want 6 (rejected entries are applied too)", f.AppliedIndex())
	}
}

func TestApplyIgnoresNonCommandEntries(t *testing.T) {
	f := New()
	if r := f.Apply(&raft.Log{Index: 1, Type: raft.LogNoop}); r != nil {
		t.Fatalf("noop entry returned %v", r)
	}
}

func TestWatchFiresOnEveryAppliedEntry(t *testing.T) {
	h := NewHarness()
	w := h.FSM.Watch()
	select {
	case <-w:
		t.Fatal("watch fired before any change")
	default:
	}
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a"}})
	<-w // closed: a blocked receive would hang the test
	w = h.FSM.Watch()
	if err := h.Apply(t, &vbatchv1.DrainAgent{AgentId: "ghost"}); err == nil {
		t.Fatal("drain of unknown agent accepted")
	}
	<-w // a proposer waiting on AppliedIndex wakes for its rejected entry too
}

func TestFSMTimeNeverRunsBackwards(t *testing.T) {
	h := NewHarness()
	start := h.Clock
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a"}})
	h.Clock = start.Add(-time.Hour) // a new leader with a slow clock
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "b"}})
	s := h.State()
	if s.Now != start.UnixMilli() {
		t.Fatalf("Now = %d, want %d", s.Now, start.UnixMilli())
	}
	if got := s.Agents["b"].RegisteredAt; got != start.Unix() {
		t.Fatalf("registered_at = %d, want the FSM's time %d", got, start.Unix())
	}
}

func TestViewSeesAppliedState(t *testing.T) {
	h := NewHarness()
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a"}})
	var n int
	h.FSM.View(func(s *State) { n = len(s.Agents) })
	if n != 1 {
		t.Fatalf("view sees %d agents", n)
	}
}

// Readers, watchers and snapshots run beside Apply, as the API and the
// leader loop do beside raft's FSM goroutine (run with -race).
func TestConcurrentReadersAndApply(t *testing.T) {
	h := running(t, 100, 1)
	done := make(chan struct{})
	errs := make(chan string, 3)
	go func() {
		defer close(done)
		for i := uint32(0); i < 100; i++ {
			tok := h.Index + 1
			if err := h.Apply(t, grantCmd(h, i, "a1")); err != nil {
				errs <- err.Error()
				return
			}
			if err := h.Apply(t, commit(i, tok, int64(i), int64(i)+1, 1)); err != nil {
				errs <- err.Error()
				return
			}
		}
	}()
	var last uint64
	for running := true; running; {
		w := h.FSM.Watch()
		idx := h.FSM.AppliedIndex()
		if idx < last {
			t.Fatalf("applied index went back: %d -> %d", last, idx)
		}
		last = idx
		h.FSM.View(func(s *State) {
			b := s.Batches[batch]
			var parts int64
			for _, c := range b.Chunks {
				parts += int64(len(c.Parts))
			}
			if b.RequestCounts.Completed != parts {
				errs <- "a reader saw a half-applied command"
			}
		})
		if _, err := h.FSM.Snapshot(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w:
		case <-done:
			running = false
		}
	}
	select {
	case e := <-errs:
		t.Fatal(e)
	default:
	}
	if got := h.batch(batch).RequestCounts.Completed; got != 100 {
		t.Fatalf("completed = %d", got)
	}
}

// TestNowBeforeExcludesTheTermsOwnStamps: a new leader whose clock runs
// ahead stamps its first commands far ahead of its predecessor; NowBefore
// its term still answers the predecessor's time, and FSM time before any
// command of the term is the FSM's current time.
func TestNowBeforeExcludesTheTermsOwnStamps(t *testing.T) {
	f := New()
	apply := func(index, term uint64, now time.Time) {
		t.Helper()
		data, err := Encode(&vbatchv1.ExpireLeases{Reason: "test"}, now)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.Apply(&raft.Log{Index: index, Term: term, Type: raft.LogCommand, Data: data}).(*vbatchv1.Result); res.Code != "" {
			t.Fatalf("apply: %v", res)
		}
	}
	if got := f.NowBefore(1); got != 0 {
		t.Fatalf("NowBefore on an empty FSM = %d, want 0", got)
	}
	prev := time.UnixMilli(1_700_000_000_000)
	apply(1, 1, prev.Add(-time.Second))
	apply(2, 1, prev)
	if got := f.NowBefore(2); got != prev.UnixMilli() {
		t.Fatalf("NowBefore(2) before any term-2 command = %d, want %d", got, prev.UnixMilli())
	}
	ahead := prev.Add(10 * time.Minute)
	apply(3, 2, ahead)
	apply(4, 2, ahead.Add(time.Second))
	if got := f.NowBefore(2); got != prev.UnixMilli() {
		t.Fatalf("NowBefore(2) after the leader's own commands = %d, want its predecessor's %d", got, prev.UnixMilli())
	}
	if got := f.NowBefore(3); got != ahead.Add(time.Second).UnixMilli() {
		t.Fatalf("NowBefore(3) = %d, want the FSM's time %d", got, ahead.Add(time.Second).UnixMilli())
	}
}
