package coordinator

import (
	"testing"
	"time"
)

func TestLatenciesMedianOfRecent(t *testing.T) {
	var l latencies
	now := time.Now()
	if _, n := l.median(now, time.Second); n != 0 {
		t.Fatalf("empty: %d samples", n)
	}
	l.add(now.Add(-10*time.Second), time.Hour) // outside the window
	for i, ms := range []int{5, 1, 300, 2, 400} {
		l.add(now.Add(time.Duration(i-5)*time.Millisecond), time.Duration(ms)*time.Millisecond)
	}
	if d, n := l.median(now, time.Second); n != 5 || d != 5*time.Millisecond {
		t.Fatalf("median %s of %d samples, want 5ms of 5", d, n)
	}
	// Only the latest medianOf count: a disk that turned slow shows
	// within a few writes, however many fast ones came before.
	for range 2 * len(l.ring) {
		l.add(now, time.Millisecond)
	}
	for range medianOf/2 + 1 {
		l.add(now, time.Second)
	}
	if d, n := l.median(now, time.Minute); n != medianOf || d != time.Second {
		t.Fatalf("after the disk turned slow: median %s of %d, want 1s of %d", d, n, medianOf)
	}
}

func TestSlowLeaderTarget(t *testing.T) {
	now := time.Now()
	fresh := 3 * time.Second
	voters := map[string]bool{"c1": true, "c2": true, "c3": true}
	peers := func(c2, c3 float64) map[string]peerDisk {
		return map[string]peerDisk{"c2": {ms: c2, at: now}, "c3": {ms: c3, at: now}}
	}
	cases := []struct {
		name   string
		mine   time.Duration
		n      int
		peers  map[string]peerDisk
		voters map[string]bool
		want   string
	}{
		{"fast leader", 20 * time.Millisecond, 50, peers(2, 3), voters, ""},
		{"slow leader, fastest follower", 400 * time.Millisecond, 50, peers(5, 3), voters, "c3"},
		{"too few writes to judge", 400 * time.Millisecond, 2, peers(5, 3), voters, ""},
		{"every disk slow", 400 * time.Millisecond, 50, peers(300, 200), voters, ""},
		{"one follower fast enough", 400 * time.Millisecond, 50, peers(300, 90), voters, "c3"},
		{"followers wrote nothing", 400 * time.Millisecond, 50, peers(-1, -1), voters, ""},
		{"a non-voter is not a target", 400 * time.Millisecond, 50, peers(5, 300), map[string]bool{"c1": true, "c3": true}, ""},
		{"stale figures", 400 * time.Millisecond, 50, map[string]peerDisk{"c2": {ms: 1, at: now.Add(-time.Minute)}}, voters, ""},
	}
	for _, c := range cases {
		got, ok := slowLeaderTarget(c.mine, c.n, 100*time.Millisecond, c.peers, c.voters, now, fresh)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("%s: target %q (%v), want %q", c.name, got, ok, c.want)
		}
	}
	if _, ok := slowLeaderTarget(time.Hour, 50, 0, peers(1, 1), voters, now, fresh); ok {
		t.Error("a zero threshold must turn the check off")
	}
}
