package coordinator

import (
	"sync"
	"time"
)

// skewFresh is how old a peer's clock figure may be and still be
// exported: the leader asks every server for its status each autopilot
// interval, so an older one belongs to a server no longer answering.
const skewFresh = time.Minute

// clockSkews keeps, on the leader, how far each peer's wall clock is from
// its own, from the Status calls autopilot makes. The raft leader stamps
// its time into every command and lease expiries are judged on it: a
// coordinator whose clock is off by more than the lease TTL cannot grant
// leases, so operators must see skew before it gets there.
type clockSkews struct {
	mu   sync.Mutex
	byID map[string]clockSkew
}

type clockSkew struct {
	seconds float64
	at      time.Time
}

// note records a peer's clock from a Status call sent and answered at the
// given local times, the peer reporting peerUnixMs (0: an older build,
// nothing recorded). offset is this node's own test clock shift. The peer
// read its clock somewhere in the call: the midpoint bounds the error by
// half the round trip.
func (s *clockSkews) note(id string, sent, answered time.Time, peerUnixMs int64, offset time.Duration) {
	if peerUnixMs <= 0 {
		return
	}
	mid := sent.Add(answered.Sub(sent) / 2).Add(offset)
	skew := time.UnixMilli(peerUnixMs).Sub(mid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID == nil {
		s.byID = map[string]clockSkew{}
	}
	s.byID[id] = clockSkew{seconds: skew.Seconds(), at: answered}
}

// current returns each peer's skew in seconds (positive: its clock is
// ahead) from figures newer than skewFresh.
func (s *clockSkews) current(now time.Time) map[string]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]float64{}
	for id, sk := range s.byID {
		if now.Sub(sk.at) < skewFresh {
			out[id] = sk.seconds
		}
	}
	return out
}
