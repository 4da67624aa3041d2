package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// A follower learns that an entry committed from the leader's next
// AppendEntries. While writes flow, that is the next write's; on a quiet
// cluster it is the one raft sends every CommitTimeout. A short
// CommitTimeout keeps followers fresh but costs an idle cluster a steady
// stream of empty AppendEntries to every follower, most of an idle
// leader's CPU; a long one alone would leave every follower up to twice
// the timeout behind the last write, and make whatever waits there for an
// index (a forwarded write, a consistent read, an agent's lease token)
// wait as long.
//
// So the leader sends a commit notice instead: when a command has been
// applied and no entry was appended after it within commitNoticeDelay, it
// appends a raft barrier. Appending it sends every follower an
// AppendEntries at once, whose commit index covers the command. A burst of
// writes costs one notice; an idle cluster sends none, and the
// CommitTimeout can be long. Barrier entries never reach the FSM, so a
// read index is the last command at or before the commit index
// (lastCommand), not the commit index itself.
const commitNoticeDelay = time.Millisecond

// commitNoticeTimeout bounds one notice.
const commitNoticeTimeout = 5 * time.Second

// commitNotices sends the leader's commit notices.
type commitNotices struct {
	r       *raft.Raft
	counter interface{ Inc() }

	mu   sync.Mutex
	last uint64 // the log's last index when a command was last applied
	kick chan struct{}
}

func newCommitNotices(r *raft.Raft, counter interface{ Inc() }) *commitNotices {
	return &commitNotices{r: r, counter: counter, kick: make(chan struct{}, 1)}
}

// applied records that a command has committed and been applied on this
// leader; lastIndex is the log's last index read after that. It never
// blocks.
func (n *commitNotices) applied(lastIndex uint64) {
	n.mu.Lock()
	n.last = max(n.last, lastIndex)
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// loop sends notices until ctx ends, one at a time.
func (n *commitNotices) loop(ctx context.Context) {
	delay := time.NewTimer(commitNoticeDelay)
	defer delay.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		}
		delay.Reset(commitNoticeDelay)
		select {
		case <-ctx.Done():
			return
		case <-delay.C:
		}
		n.mu.Lock()
		last := n.last
		n.mu.Unlock()
		// An entry appended after last went out with a commit index that
		// covers every command applied before it.
		if n.r.LastIndex() > last || n.r.State() != raft.Leader {
			continue
		}
		// raft's barrier future does not watch for shutdown, and one
		// caught in the FSM's queue when raft stops is never answered:
		// wait for it only while the coordinator runs.
		f := n.r.Barrier(commitNoticeTimeout)
		done := make(chan error, 1)
		go func() { done <- f.Error() }()
		select {
		case <-ctx.Done():
			return
		case err := <-done:
			if err == nil {
				n.counter.Inc()
			}
		}
	}
}

// lastCommand returns the last command at or before commit: the index a
// consistent read waits for. Entries that never reach the FSM (commit
// notices, raft's no-op of a new term, configuration changes) are skipped,
// or a reader would wait for an index the FSM never reports. ok is false
// when the log holds no command in that range (the earlier entries were
// compacted into a snapshot). The recent entries come from raft's log
// cache, without a read of the store.
func lastCommand(logs raft.LogStore, commit uint64) (index uint64, ok bool, err error) {
	var l raft.Log
	for i := commit; i > 0; i-- {
		if err := logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				return 0, false, nil
			}
			return 0, false, fmt.Errorf("raft log entry %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			return i, true, nil
		}
	}
	return 0, false, nil
}
