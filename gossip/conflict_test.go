package gossip

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventLog records a pool's membership events as "kind:name".
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) record(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e.Kind+":"+e.Member.Name)
	l.mu.Unlock()
}

func (l *eventLog) has(ev string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e == ev {
			return true
		}
	}
	return false
}

// TestJoinRefusedWhenNameHeldElsewhere: an agent given a coordinator's node
// id is refused at Join with both addresses and roles, both sides count
// the conflict, and the refused node's Leave does not make the pool drop
// the coordinator that holds the name.
func TestJoinRefusedWhenNameHeldElsewhere(t *testing.T) {
	c1 := start(t, "c1", Meta{Role: RoleCoordinator, RPCAddr: "127.0.0.1:1"}, nil)
	defer c1.Leave(time.Second)
	var watched eventLog
	w := start(t, "w1", Meta{Role: RoleAgent}, watched.record)
	defer w.Leave(time.Second)
	if _, err := w.Join([]string{c1.Addr()}); err != nil {
		t.Fatalf("join w1: %v", err)
	}
	waitFor(t, "w1 sees c1", func() bool { _, ok := w.MemberWithRole("c1", RoleCoordinator); return ok })

	twin := start(t, "c1", Meta{Role: RoleAgent}, nil)
	_, err := twin.Join([]string{c1.Addr()})
	if !errors.Is(err, ErrNameConflict) {
		t.Fatalf("join of a second node named c1: %v, want ErrNameConflict", err)
	}
	for _, want := range []string{c1.Addr() + " (coordinator)", twin.Addr() + " (agent)", "--node-id"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if twin.NameConflicts() == 0 {
		t.Error("the refused node did not count the conflict")
	}
	waitFor(t, "c1 counts the conflict", func() bool { return c1.NameConflicts() > 0 })
	if err := twin.Leave(time.Second); err != nil {
		t.Fatalf("leave of the refused node: %v", err)
	}
	// A leave message names no address: announced, it would mark c1 as
	// gone. Give it the time it would take to spread (many gossip rounds).
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if watched.has("leave:c1") {
			t.Fatal("the refused node's leave made the pool drop c1")
		}
		if m, ok := w.MemberWithRole("c1", RoleCoordinator); !ok || m.Addr != c1.Addr() {
			t.Fatalf("w1 lists c1 as %+v (found %v), want the coordinator at %s", m, ok, c1.Addr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := w.MemberWithRole("c1", RoleAgent); ok {
		t.Error("MemberWithRole found c1 as an agent")
	}
}

// TestRestartOnSameAddressKeepsName: a node that comes back on its old
// address, after a crash or a clean leave, joins again under its name
// with its new metadata, and nobody sees a conflict.
func TestRestartOnSameAddressKeepsName(t *testing.T) {
	c1 := start(t, "c1", Meta{Role: RoleCoordinator}, nil)
	defer c1.Leave(time.Second)
	a1 := start(t, "a1", Meta{Role: RoleAgent, Models: []string{"m0"}}, nil)
	if _, err := a1.Join([]string{c1.Addr()}); err != nil {
		t.Fatalf("join: %v", err)
	}
	addr := a1.Addr()
	waitFor(t, "c1 sees a1", func() bool { _, ok := c1.MemberWithRole("a1", RoleAgent); return ok })
	for i, crash := range []bool{true, false} {
		if crash {
			// A crash: the listeners stop, nothing is announced.
			a1.stopKeyring()
			if err := a1.list.Shutdown(); err != nil {
				t.Fatal(err)
			}
		} else if err := a1.Leave(time.Second); err != nil {
			t.Fatalf("leave: %v", err)
		}
		model := []string{"m1", "m2"}[i]
		p, err := Start(Config{Name: "a1", BindAddr: addr, Meta: Meta{Role: RoleAgent, Models: []string{model}}, ProbeInterval: 500 * time.Millisecond})
		if err != nil {
			t.Fatalf("restart a1 on %s: %v", addr, err)
		}
		a1 = p
		if _, err := a1.Join([]string{c1.Addr()}); err != nil {
			t.Fatalf("join after restart (crash %v): %v", crash, err)
		}
		waitFor(t, "c1 sees a1's new metadata", func() bool {
			m, ok := c1.MemberWithRole("a1", RoleAgent)
			return ok && m.Addr == addr && len(m.Meta.Models) == 1 && m.Meta.Models[0] == model
		})
	}
	defer a1.Leave(time.Second)
	if n, m := c1.NameConflicts(), a1.NameConflicts(); n != 0 || m != 0 {
		t.Fatalf("conflicts counted: c1 %d, a1 %d", n, m)
	}
}
