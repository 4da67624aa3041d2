package e2e

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// rollBound is how long after the last fault a batch may take to finish.
const rollBound = 2 * time.Minute

// rollSetup starts the rolling cluster, uploads and starts a batch of
// lines lines, and starts the clients (one reader, two uploaders).
func rollSetup(t *testing.T, lines int) (*rollCluster, *history, *rollLoad) {
	t.Helper()
	rc := startRollCluster(t)
	h := newHistory()
	tb := &trackedBatch{Prefix: "roll", Lines: lines}
	data := chaosLines(tb.Prefix, lines)
	id, err := chaosUpload(rc.Coords[0].URL(), "roll.jsonl", data)
	if err != nil {
		t.Fatalf("upload the batch input: %v", err)
	}
	tb.FileID = id
	h.uploads[id] = sum256(data)
	b, err := chaosCreateBatch(rc.Coords[1].URL(), id)
	if err != nil {
		t.Fatalf("create the batch: %v", err)
	}
	tb.ID = b.ID
	h.batches = append(h.batches, tb)
	h.observe(tb, b)
	load := newRollLoad(rc, h, tb)
	load.start(2)
	t.Cleanup(func() {
		select {
		case <-load.stop:
		default:
			load.halt()
		}
	})
	return rc, h, load
}

// lastSeen is the batch's latest status the reader observed.
func lastSeen(h *history, tb *trackedBatch) (status string, done int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return tb.Last.Status, tb.Last.RequestCounts.Completed + tb.Last.RequestCounts.Failed
}

// finish waits until the reader has seen the batch terminal, stops the
// clients, then runs the chaos invariants (exactly once, uploads on every
// coordinator, monotonic statuses) and fails on any violation or any
// client request that failed other than as allowed.
func finish(t *testing.T, rc *rollCluster, h *history, load *rollLoad) rollCounts {
	t.Helper()
	deadline := time.Now().Add(rollBound)
	for {
		if st, _ := lastSeen(h, load.tb); terminal(st) {
			break
		}
		if time.Now().After(deadline) {
			st, done := lastSeen(h, load.tb)
			t.Fatalf("batch %s still %s (%d of %d done) %s after the last fault\n%s", load.tb.ID, st, done, load.tb.Lines, rollBound, rc.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	load.halt()
	iv := check(&chaosCluster{Cluster: rc.Cluster}, h)
	for _, v := range [][]string{iv.ExactlyOnce, iv.Uploads, iv.Monotonic, iv.Terminal} {
		for _, s := range v {
			t.Errorf("invariant: %s", s)
		}
	}
	c := load.counts()
	for _, f := range c.Failures {
		t.Errorf("client request failed: %s", f)
	}
	if st, _ := lastSeen(h, load.tb); st != "completed" {
		t.Errorf("batch ended %s, want completed", st)
	}
	if iv.total() > 0 || len(c.Failures) > 0 {
		t.Logf("logs:\n%s", rc.Logs())
	}
	t.Logf("clients: %d requests (%s); retryable %d (%s); connection errors to a down coordinator %d; failed %d; acknowledged uploads %d, all read back identical from every coordinator: %v",
		c.Requests, c.PerOp, c.Retryable, c.PerStatus, c.DownErrs, len(c.Failures), c.Uploads, len(iv.Uploads) == 0)
	if c.Requests == 0 || c.Uploads < 2 {
		t.Errorf("the clients did almost nothing: %d requests, %d uploads", c.Requests, c.Uploads)
	}
	return c
}

// TestRollingRestart restarts every coordinator (followers first, the
// leader last after handing leadership away) and then every agent, one at
// a time and gracefully, waiting for the cluster to be healthy between
// steps, while a batch runs and clients call the API round-robin over the
// coordinators. VBATCH_ROLL_ROUNDS=N rolls N times over a batch N times as
// long.
func TestRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	rounds := rollRounds(t)
	began := time.Now()
	rc, h, load := rollSetup(t, rollLinesPerRound*rounds)
	var steps []rollStep
	for r := 0; r < rounds; r++ {
		steps = append(steps, rc.roll(t)...)
	}
	rolled := time.Now()
	st, done := lastSeen(h, load.tb)
	if terminal(st) {
		t.Fatalf("batch was %s before the roll ended: it must outlast the roll (raise rollLinesPerRound)", st)
	}
	var maxHealth time.Duration
	for _, s := range steps {
		maxHealth = max(maxHealth, s.ToHealth)
		t.Logf("step %-7s %-23s handoff %6s  exit %6s  restart to healthy %6s", s.Target, s.Role,
			s.Handoff.Round(time.Millisecond), s.Exit.Round(time.Millisecond), s.ToHealth.Round(time.Millisecond))
		for _, w := range s.Waited {
			t.Logf("    waited: %s", w)
		}
	}
	t.Logf("roll of %d steps took %s; batch %s at %d of %d lines when it ended; max restart to healthy %s",
		len(steps), rolled.Sub(began).Round(time.Millisecond), st, done, load.tb.Lines, maxHealth.Round(time.Millisecond))
	finish(t, rc, h, load)
	t.Logf("batch of %d lines completed %s after the roll; test took %s", load.tb.Lines,
		time.Since(rolled).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// TestAllCoordinatorsKilled SIGKILLs all three coordinators at the same
// moment while a batch runs and clients call the API, restarts them all,
// and checks that they elect a leader, the batch completes with every line
// exactly once and every acknowledged upload is intact. (TestChaos draws
// kill-all-coordinators only by chance: its default 20 s schedule, seed 1,
// does not.) VBATCH_ROLL_ROUNDS=N kills N times during one batch.
func TestAllCoordinatorsKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	rounds := rollRounds(t)
	began := time.Now()
	lines := rollLinesPerRound / 2 * rounds
	rc, h, load := rollSetup(t, lines)
	for r := 1; r <= rounds; r++ {
		// Kill once the batch is well under way: round r of N at r/(N+1).
		want := int64(lines * r / (rounds + 1))
		WaitFor(t, rollBound, fmt.Sprintf("batch %d of %d lines done", want, lines), func() bool {
			_, done := lastSeen(h, load.tb)
			return done >= want
		})
		st, done := lastSeen(h, load.tb)
		if terminal(st) {
			t.Fatalf("batch was %s before kill %d", st, r)
		}
		killed := time.Now()
		for i := range rc.Coords {
			rc.down.set(i, true)
		}
		// One signal each, back to back, before waiting on any of them.
		for _, co := range rc.Coords {
			if err := co.Signal(syscall.SIGKILL); err != nil {
				t.Fatalf("SIGKILL %s: %v", co.ID, err)
			}
		}
		for _, co := range rc.Coords {
			co.Kill()
		}
		restarted := time.Now()
		for _, co := range rc.Coords {
			co.Restart(t)
		}
		for i := range rc.Coords {
			rc.waitServing(t, i)
		}
		rc.WaitLeader(30 * time.Second)
		toLeader := time.Since(killed)
		var acked time.Time
		WaitFor(t, 30*time.Second, "an upload acknowledged after the restart", func() bool {
			at, ok := load.firstAckAfter(restarted)
			acked = at
			return ok
		})
		_, healthy, waited := rc.waitHealthy(t, 60*time.Second)
		for _, w := range waited {
			t.Logf("    waited: %s", w)
		}
		toWrite, toHealthy := acked.Sub(killed), healthy.Sub(killed)
		t.Logf("kill %d at %d of %d lines: leader %s after SIGKILL, first acknowledged upload %s, autopilot healthy %s",
			r, done, lines, toLeader.Round(time.Millisecond), toWrite.Round(time.Millisecond), toHealthy.Round(time.Millisecond))
	}
	rc.WaitAgents(t, 3)
	last := time.Now()
	finish(t, rc, h, load)
	t.Logf("batch of %d lines completed %s after the last restart; test took %s", lines,
		time.Since(last).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}
