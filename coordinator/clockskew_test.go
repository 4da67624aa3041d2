package coordinator

import (
	"math"
	"testing"
	"time"
)

func TestClockSkewNote(t *testing.T) {
	var s clockSkews
	t0 := time.Unix(1000, 0)
	// The peer answered 30 s ahead of the call's midpoint.
	s.note("c2", t0, t0.Add(100*time.Millisecond), t0.Add(50*time.Millisecond+30*time.Second).UnixMilli(), 0)
	s.note("old", t0, t0.Add(time.Millisecond), 0, 0) // an older build: nothing
	got := s.current(t0.Add(time.Second))
	if len(got) != 1 || math.Abs(got["c2"]-30) > 0.001 {
		t.Fatalf("skews = %v, want c2 at 30 s", got)
	}
	if got := s.current(t0.Add(skewFresh + time.Second)); len(got) != 0 {
		t.Fatalf("stale figures exported: %v", got)
	}
}

// TestLeaderReportsClockSkew: the leader exports how far each coordinator's
// clock is from its own; one 30 s off shows it.
func TestLeaderReportsClockSkew(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) {
		if c.NodeID == "c2" {
			c.clockOffset = 30 * time.Second
		}
	})
	leader := waitLeader(t, nodes)
	var skews map[string]float64
	waitFor(t, 20*time.Second, "the leader to report two peers' clocks", func() bool {
		skews = gaugeVec(t, leader, "vbatch_clock_skew_seconds", "server")
		return len(skews) == 2
	})
	worst := 0.0
	for _, v := range skews {
		worst = max(worst, math.Abs(v))
	}
	if math.Abs(worst-30) > 2 {
		t.Fatalf("skews on leader %s = %v, want one of about ±30 s", leader.cfg.NodeID, skews)
	}
	for _, c := range nodes {
		if c != leader {
			if got := gaugeVec(t, c, "vbatch_clock_skew_seconds", "server"); len(got) != 0 {
				t.Errorf("follower %s exports skews %v", c.cfg.NodeID, got)
			}
		}
	}
}

// gaugeVec reads one labelled gauge from a coordinator's registry, by the
// value of label.
func gaugeVec(t *testing.T, c *Coordinator, name, label string) map[string]float64 {
	t.Helper()
	mfs, err := c.registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}
