package monitoring

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestGossipNameConflictsReadsAtScrape: the counter shows the pool's count
// as of each scrape, and is listed for dashboards and alert rules.
func TestGossipNameConflictsReadsAtScrape(t *testing.T) {
	var n atomic.Int64
	reg := registryWith(t, NewGossipNameConflicts(n.Load))
	n.Store(3)
	want := `# HELP vbatch_gossip_name_conflicts_total Times this node saw two nodes claim one gossip name (a node id given to two coordinators or agents).
# TYPE vbatch_gossip_name_conflicts_total counter
vbatch_gossip_name_conflicts_total 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "vbatch_gossip_name_conflicts_total"); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(MetricNames(), "vbatch_gossip_name_conflicts_total") {
		t.Fatal("vbatch_gossip_name_conflicts_total is not in MetricNames")
	}
}
