package blob

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// errStalled ends a transfer whose peer made no progress for the idle
// timeout.
var errStalled = errors.New("peer made no progress")

// watchdog calls fire once a transfer made no progress for idle. Contexts
// alone do not end a transfer to or from a peer that stopped reading or
// sending: a repair runs under the coordinator's lifetime, and Go's HTTP
// server does not cancel an upload's context while its handler is not
// reading the body, so such a peer would hold a connection, a buffer and
// everyone waiting on the transfer for good.
type watchdog struct {
	idle time.Duration
	// waiting reports whether the transfer waits on the peer now; while it
	// does not (a stream whose source is slow), the clock does not run. Nil
	// means always.
	waiting func() bool
	fire    func()
	last    atomic.Int64 // unix nanoseconds of the last progress
	fired   atomic.Bool
	stopped atomic.Bool
	timer   *time.Timer
}

// newWatchdog starts a watchdog; stop it once the transfer is over.
func newWatchdog(idle time.Duration, waiting func() bool, fire func()) *watchdog {
	w := &watchdog{idle: idle, waiting: waiting, fire: fire}
	w.progress()
	w.timer = time.AfterFunc(idle, w.check)
	return w
}

// progress restarts the idle clock.
func (w *watchdog) progress() { w.last.Store(time.Now().UnixNano()) }

func (w *watchdog) check() {
	if w.stopped.Load() {
		return
	}
	if w.waiting != nil && !w.waiting() {
		w.progress()
	}
	since := time.Since(time.Unix(0, w.last.Load()))
	if since < w.idle {
		w.timer.Reset(w.idle - since)
		return
	}
	w.fired.Store(true)
	w.fire()
}

// stop ends the watch. A fire already due may still run: it must be
// harmless once the transfer is over (a cancel, a close).
func (w *watchdog) stop() {
	w.stopped.Store(true)
	w.timer.Stop()
}

// explain returns err, or in its place an error wrapping errStalled if the
// watchdog fired: the cancellation that fire caused says less.
func (w *watchdog) explain(err error) error {
	if err == nil || !w.fired.Load() {
		return err
	}
	return fmt.Errorf("%w for %v (%v)", errStalled, w.idle, err)
}

// progressReader reports each read that moved bytes to a watchdog.
type progressReader struct {
	r  io.Reader
	wd *watchdog
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.wd.progress()
	}
	return n, err
}
