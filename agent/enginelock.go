package agent

import (
	"context"
	"math"

	"golang.org/x/sync/semaphore"
)

// engineLock keeps a crash-isolated batch line alone on the engine: every
// other batch request and every online request holds it shared, an
// isolated line alone. Unlike a sync.RWMutex, a wait for it ends with its
// context, so a revoked lease, a drain that timed out or the shutdown's
// cut-off ends a line waiting for an isolated one (or waiting, isolated,
// for the requests before it, which may take their whole timeout); and a
// request that must not wait (online) can ask without waiting.
//
// Waiters are served in order: once an isolated line waits, new shared
// requests wait behind it, so a steady stream of them cannot starve it.
type engineLock struct{ sem *semaphore.Weighted }

// engineLockAll is the weight an exclusive holder takes: more than the
// shared holders there can ever be.
const engineLockAll = math.MaxInt64

func newEngineLock() *engineLock {
	return &engineLock{sem: semaphore.NewWeighted(engineLockAll)}
}

// lockShared waits for the lock shared; ctx's error if ctx ends first.
func (l *engineLock) lockShared(ctx context.Context) error { return l.sem.Acquire(ctx, 1) }

// tryShared takes the lock shared if nobody holds it alone or waits to.
func (l *engineLock) tryShared() bool { return l.sem.TryAcquire(1) }

// unlockShared gives back a shared hold.
func (l *engineLock) unlockShared() { l.sem.Release(1) }

// lock waits for the lock alone; ctx's error if ctx ends first.
func (l *engineLock) lock(ctx context.Context) error { return l.sem.Acquire(ctx, engineLockAll) }

// unlock gives back the lock held alone.
func (l *engineLock) unlock() { l.sem.Release(engineLockAll) }
