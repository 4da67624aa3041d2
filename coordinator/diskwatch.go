package coordinator

import (
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// logWriteWindow is how far back the figure of recent raft log writes
// looks.
const logWriteWindow = 5 * time.Second

// timedLogStore is raft's log store with the duration of every write
// recorded: each write syncs the disk, so their recent median tells a
// slow disk (see slowLeader).
type timedLogStore struct {
	raft.LogStore
	writes *latencies
}

// StoreLog implements raft.LogStore.
func (s *timedLogStore) StoreLog(l *raft.Log) error {
	start := time.Now()
	err := s.LogStore.StoreLog(l)
	s.writes.add(start, time.Since(start))
	return err
}

// StoreLogs implements raft.LogStore.
func (s *timedLogStore) StoreLogs(ls []*raft.Log) error {
	start := time.Now()
	err := s.LogStore.StoreLogs(ls)
	s.writes.add(start, time.Since(start))
	return err
}

// latencies keeps the durations of the most recent operations.
type latencies struct {
	mu   sync.Mutex
	ring [64]latency
	next int
	n    int
}

type latency struct {
	at time.Time
	d  time.Duration
}

func (l *latencies) add(at time.Time, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.next] = latency{at: at, d: d}
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
}

// median returns the median duration of the last (at most) medianOf
// operations that started in the window before now, and how many that
// was: recent enough to react within a few writes, wide enough that a
// stray slow write (a GC pause) does not count.
func (l *latencies) median(now time.Time, window time.Duration) (time.Duration, int) {
	l.mu.Lock()
	var ds []time.Duration
	for k := 1; k <= l.n && len(ds) < medianOf; k++ {
		s := l.ring[(l.next-k+len(l.ring))%len(l.ring)]
		if now.Sub(s.at) > window {
			break
		}
		ds = append(ds, s.d)
	}
	l.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], len(ds)
}

// medianOf is how many of the latest operations median looks at.
const medianOf = 9

// logWriteMs is this node's recent median raft log write in milliseconds,
// -1 when it wrote none, as StatusResponse.log_write_ms reports it.
func (c *Coordinator) logWriteMs() float64 {
	if c.logWrites == nil {
		return -1
	}
	d, n := c.logWrites.median(time.Now(), logWriteWindow)
	if n == 0 {
		return -1
	}
	return float64(d.Microseconds()) / 1000
}
