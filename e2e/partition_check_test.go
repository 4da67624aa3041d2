package e2e

import (
	"testing"
	"time"
)

// TestTermWatch checks the election-safety checker: two leaders in one
// term are flagged once each coordinator said so twice in a row, a lone
// sample (state and term read across a term change) is not, and leaders of
// different terms are fine.
func TestTermWatch(t *testing.T) {
	lead := func(term uint64) coordFigures { return coordFigures{OK: true, Leader: true, Term: term} }
	follow := func(term uint64) coordFigures { return coordFigures{OK: true, Term: term} }
	type sample struct {
		i int
		f coordFigures
	}
	cases := []struct {
		name    string
		samples []sample
		bad     int
		led     int
	}{
		{"one leader", []sample{{0, lead(2)}, {1, follow(2)}, {0, lead(2)}, {0, lead(2)}}, 0, 1},
		{"new leader, new term", []sample{{0, lead(2)}, {0, lead(2)}, {1, lead(3)}, {1, lead(3)}, {0, follow(3)}}, 0, 2},
		{"lone sample", []sample{{0, lead(2)}, {0, lead(2)}, {1, follow(2)}, {1, lead(2)}, {1, follow(3)}}, 0, 1},
		{"split brain", []sample{{0, lead(2)}, {0, lead(2)}, {1, lead(2)}, {1, lead(2)}}, 1, 1},
	}
	for _, c := range cases {
		w := &termWatch{last: make([]coordFigures, 3), leaderOf: map[uint64]int{}}
		for _, s := range c.samples {
			w.sample(s.i, s.f, time.Time{})
		}
		if len(w.bad) != c.bad || len(w.leaderOf) != c.led {
			t.Errorf("%s: violations %v and %d terms led, want %d and %d", c.name, w.bad, len(w.leaderOf), c.bad, c.led)
		}
	}
}
