package coordinator

import (
	"errors"
	"sync"
	"time"
)

// clockStepThreshold is how far the leader's wall clock may move apart
// from its monotonic clock within a term before it counts as a step (an
// NTP or chrony step, a VM resumed): far above anything slewing does
// between two commands, far below the margin a lease keeps (TTL - TTL/3).
const clockStepThreshold = time.Second

// gateWaitMax bounds how long a command waits for the leader to extend
// its leases before it is answered with a retryable error.
const gateWaitMax = 5 * time.Second

// errLeasesNotExtended answers a command that reached a leader which has
// not yet extended the leases of its term (or of its stepped clock).
var errLeasesNotExtended = errors.New("the leader has not yet extended the leases it inherited")

// leaderClock holds back the commands of a leader until the leases are
// extended on the clock it stamps them with. A new term's leader, and
// one whose wall clock just stepped forward, first commits ExtendLeases
// (on the leader loop); until then every other command waits. Otherwise
// the first command stamped on a clock ahead of the one the leases were
// last renewed on (a barrier, a forwarded write) would move the FSM's
// time past them: the FSM would refuse their agents' renewals and parts
// as stale, a window that every renewal retried through an election
// hits, and the next tick would expire them under live agents.
//
// Within a term it also watches the wall clock against the monotonic
// one: a forward step shuts the gate and wakes the leader loop, which
// extends the leases on the new clock and opens it again; a backward
// step only moves the anchor (the FSM's time never runs backwards, so
// leases then last longer by the step, never shorter).
type leaderClock struct {
	mu sync.Mutex
	// term is the term whose leases are extended; 0 while shut.
	term uint64
	// anchorWall (the coordinator's clock, no monotonic reading) and
	// anchorMono (mono's) are the same instant: when the gate last opened
	// or the clock was re-anchored.
	anchorWall, anchorMono time.Time
	// mono reads the monotonic clock (time.Now; tests move it).
	mono  func() time.Time
	ready chan struct{} // closed while open
	open  bool
	// stepFrom is, after a forward step, the time the clock should have
	// shown: the reference for which leases were given up.
	stepFrom time.Time
	// stepped wakes the leader loop after a step (buffered, one pending).
	stepped chan struct{}
}

func newLeaderClock() *leaderClock {
	return &leaderClock{ready: make(chan struct{}), stepped: make(chan struct{}, 1), mono: time.Now}
}

// openFor opens the gate for term, anchored at the instant the leases
// were extended on: now on the coordinator's clock, mono on lc.mono, read
// together before the extension was proposed (read after its commit,
// the monotonic anchor would run ahead by the commit's latency, and a
// commit slower than the step threshold would look like a step).
func (lc *leaderClock) openFor(term uint64, now, mono time.Time) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.term, lc.anchorWall, lc.anchorMono, lc.stepFrom = term, now.Round(0), mono, time.Time{}
	if !lc.open {
		close(lc.ready)
		lc.open = true
	}
}

// shut closes the gate: this node no longer leads.
func (lc *leaderClock) shut() {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.shutLocked()
}

// shutLocked closes the gate; lc.mu must be held.
func (lc *leaderClock) shutLocked() {
	lc.term = 0
	if lc.open {
		lc.ready = make(chan struct{})
		lc.open = false
	}
}

// checkLocked reports, for an open gate, whether now is a forward step
// away from the anchor; it shuts the gate and wakes the leader loop if
// so, and re-anchors on a backward step. lc.mu must be held.
func (lc *leaderClock) checkLocked(now time.Time) (step time.Duration) {
	expected := lc.anchorWall.Add(lc.mono().Sub(lc.anchorMono))
	step = now.Round(0).Sub(expected)
	switch {
	case step > clockStepThreshold:
		lc.stepFrom = expected
		lc.shutLocked()
		select {
		case lc.stepped <- struct{}{}:
		default:
		}
	case step < -clockStepThreshold:
		lc.anchorWall, lc.anchorMono = now.Round(0), lc.mono()
	}
	return step
}

// check is the leader loop's look at its clock in term: whether the
// gate is open for term on an unstepped clock, and the step it saw.
func (lc *leaderClock) check(term uint64, now time.Time) (ok bool, step time.Duration) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.term != term {
		return false, 0
	}
	step = lc.checkLocked(now)
	return lc.term == term, step
}

// isOpen reports whether the gate is open for term.
func (lc *leaderClock) isOpen(term uint64) bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.open && lc.term == term
}

// stepReference is the time the clock should have shown when it last
// stepped forward (zero if it has not since the gate opened).
func (lc *leaderClock) stepReference() time.Time {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.stepFrom
}

// admit lets a command of term through once the gate is open for it on
// an unstepped clock and returns the time to stamp it with. With wait it
// waits up to gateWaitMax or until done is closed, else it answers at
// once.
func (lc *leaderClock) admit(done <-chan struct{}, term func() uint64, now func() time.Time, wait bool) (time.Time, error) {
	var timeout <-chan time.Time
	for {
		t, cur := now(), term()
		lc.mu.Lock()
		if lc.open && lc.term != cur {
			lc.shutLocked() // opened for an earlier term
		}
		if lc.term == cur && cur != 0 {
			lc.checkLocked(t)
			if lc.term == cur {
				lc.mu.Unlock()
				return t, nil
			}
		}
		ready := lc.ready
		lc.mu.Unlock()
		if !wait {
			return time.Time{}, errLeasesNotExtended
		}
		if timeout == nil {
			timer := time.NewTimer(gateWaitMax)
			defer timer.Stop()
			timeout = timer.C
		}
		select {
		case <-ready:
		case <-done:
			return time.Time{}, errLeasesNotExtended
		case <-timeout:
			return time.Time{}, errLeasesNotExtended
		}
	}
}
