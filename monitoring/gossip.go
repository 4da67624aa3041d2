package monitoring

import "github.com/prometheus/client_golang/prometheus"

// NewGossipNameConflicts is vbatch_gossip_name_conflicts_total, on
// coordinators and agents alike: how many times this node saw two nodes
// claim one gossip name (two coordinators or agents given the same node
// id). count is read at scrape time from the node's gossip pool. Any
// increase needs an operator: one of the two nodes is invisible to the
// pool, or was refused at start.
func NewGossipNameConflicts(count func() int64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "vbatch_gossip_name_conflicts_total",
		Help: "Times this node saw two nodes claim one gossip name (a node id given to two coordinators or agents).",
	}, func() float64 { return float64(count()) })
}
