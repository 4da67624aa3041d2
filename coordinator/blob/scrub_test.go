package blob

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"
)

func TestScrubFindsEveryKindOfRot(t *testing.T) {
	s := newStore(t)
	good := ingest(t, s, randBytes(3*SumBlockSize+17, 1))
	flipped := ingest(t, s, randBytes(2*SumBlockSize, 2))
	truncated := ingest(t, s, randBytes(SumBlockSize+5, 3))
	noSidecar := ingest(t, s, randBytes(100, 4))
	flipByte(t, s.path(flipped), SumBlockSize+3) // second block
	if err := os.Truncate(s.path(truncated), SumBlockSize); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.sumPath(noSidecar)); err != nil {
		t.Fatal(err)
	}

	sc := &Scrubber{Store: s}
	stats, err := sc.Pass(context.Background())
	if err != nil {
		t.Fatalf("pass: %v", err)
	}
	want := []string{flipped, truncated, noSidecar}
	sort.Strings(want)
	if stats.Blobs != 4 || !slices.Equal(stats.Corrupt, want) || stats.Failed != 0 {
		t.Fatalf("pass = %+v, want 4 blobs, corrupt %v", stats, want)
	}
	for _, sha := range want {
		if s.Has(sha) || !s.Quarantined(sha) {
			t.Errorf("blob %s: has=%v quarantined=%v, want moved to quarantine", sha, s.Has(sha), s.Quarantined(sha))
		}
	}
	if !s.Has(good) {
		t.Fatalf("good blob was moved")
	}
	if _, err := readAll(s, good); err != nil {
		t.Fatalf("good blob unreadable after scrub: %v", err)
	}
	if got := s.Corruptions(); got != 3 {
		t.Errorf("Corruptions = %d, want 3", got)
	}
	if sc.ScrubbedBytes() < 3*SumBlockSize+17 {
		t.Errorf("ScrubbedBytes = %d, want at least the good blob's size", sc.ScrubbedBytes())
	}

	// A second pass finds nothing more: the rotted copies are gone.
	stats, err = sc.Pass(context.Background())
	if err != nil || stats.Blobs != 1 || len(stats.Corrupt) != 0 {
		t.Fatalf("second pass = %+v, %v; want the one good blob", stats, err)
	}
}

func TestScrubPacesReads(t *testing.T) {
	s := newStore(t)
	ingest(t, s, randBytes(512<<10, 5))
	sc := &Scrubber{Store: s, Rate: 1 << 20} // 1 MiB/s: half a second at least
	start := time.Now()
	if _, err := sc.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("512 KiB at 1 MiB/s took %v, want about half a second", took)
	}
}

func TestScrubStopsWithContext(t *testing.T) {
	s := newStore(t)
	ingest(t, s, randBytes(512<<10, 6))
	sc := &Scrubber{Store: s, Rate: 1 << 10} // 1 KiB/s: would take minutes
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := sc.Pass(ctx); done <- err }()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("cancelled pass returned no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pass did not stop when its context ended")
	}
}

// TestScrubResumesFromCursor: a pass cut short by a restart goes on after
// the last blob it verified, and records the pass's end.
func TestScrubResumesFromCursor(t *testing.T) {
	s := newStore(t)
	var shas []string
	for i := range 3 {
		shas = append(shas, ingest(t, s, randBytes(1000, uint64(10+i))))
	}
	sort.Strings(shas)
	for _, sha := range shas {
		flipByte(t, s.path(sha), 10)
	}
	started := time.Now().Add(-time.Hour).Unix()
	writeScrubState(t, s, scrubState{Started: started, Cursor: shas[1], Running: true})

	sc := &Scrubber{Store: s, Interval: 24 * time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sc.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for sc.LastPass().IsZero() {
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("resumed pass did not finish")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done

	if !s.Has(shas[0]) || !s.Has(shas[1]) {
		t.Errorf("blobs up to the cursor were scrubbed again")
	}
	if s.Has(shas[2]) || !s.Quarantined(shas[2]) {
		t.Errorf("blob after the cursor was not scrubbed")
	}
	if !sc.PassRunningSince().IsZero() {
		t.Errorf("PassRunningSince = %v after the pass ended", sc.PassRunningSince())
	}
	st := readScrubState(t, s)
	if st.Running || st.Cursor != "" || st.Started != started || st.LastPass == 0 {
		t.Fatalf("state after the pass = %+v, want ended, started %d", st, started)
	}
}

// TestScrubWaitsForInterval: a restarted coordinator whose last pass began
// recently does not start another; one whose last pass is an interval old
// starts at once.
func TestScrubWaitsForInterval(t *testing.T) {
	for _, tc := range []struct {
		name    string
		started time.Duration // ago
		scrubs  bool
		window  time.Duration // how long Run is watched
	}{
		// A pass over one small blob takes milliseconds: half a second
		// without one shows Run waiting.
		{"recent", time.Minute, false, 500 * time.Millisecond},
		{"due", 2 * time.Hour, true, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			sha := ingest(t, s, randBytes(1000, 20))
			flipByte(t, s.path(sha), 1)
			last := time.Now().Add(-tc.started).Unix()
			writeScrubState(t, s, scrubState{Started: last, LastPass: last})
			sc := &Scrubber{Store: s, Interval: time.Hour}
			ctx, cancel := context.WithTimeout(context.Background(), tc.window)
			defer cancel()
			done := make(chan struct{})
			go func() { sc.Run(ctx); close(done) }()
			if tc.scrubs {
				for s.Has(sha) && ctx.Err() == nil {
					time.Sleep(5 * time.Millisecond)
				}
				if s.Has(sha) {
					t.Fatal("due pass did not run")
				}
				cancel()
			}
			<-done
			if !tc.scrubs && !s.Has(sha) {
				t.Fatal("a pass ran before the interval was up")
			}
		})
	}
}

func writeScrubState(t *testing.T, s *Store, st scrubState) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, scrubStateFile), b, 0o640); err != nil {
		t.Fatal(err)
	}
}

func readScrubState(t *testing.T, s *Store) scrubState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, scrubStateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st scrubState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPacerCatchesUpOnlyBriefly: after reads fell behind the rate (a busy
// disk), the pacer lets at most pacerSlack of reading through at full
// speed, not the whole shortfall.
func TestPacerCatchesUpOnlyBriefly(t *testing.T) {
	p := pacer{rate: 1 << 20, start: time.Now().Add(-10 * time.Second)} // 10 s behind
	ctx := context.Background()
	if err := p.wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.wait(ctx, 2<<20); err != nil { // 2 s at the rate, 1 s of slack
		t.Fatal(err)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Fatalf("2 MiB at 1 MiB/s after falling behind took %v: the pacer let the whole shortfall through", took)
	}
}
