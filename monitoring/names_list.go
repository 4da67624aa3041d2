package monitoring

import (
	"regexp"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// descName pulls the fully-qualified name out of a Desc's String form,
// which client_golang keeps stable: Desc{fqName: "name", ...}.
var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames lists every metric family vbatch defines, coordinator and
// agent, sorted. Dashboards and alert rules may query only these, and the
// _bucket, _sum and _count series of the HistogramNames.
func MetricNames() []string {
	names, _ := definedNames()
	return names
}

// HistogramNames lists the metric families that are histograms, sorted.
func HistogramNames() []string {
	_, hists := definedNames()
	return hists
}

// collecting is a Registerer that only keeps what is registered.
type collecting struct{ cs []prometheus.Collector }

func (r *collecting) Register(c prometheus.Collector) error {
	r.cs = append(r.cs, c)
	return nil
}

func (r *collecting) MustRegister(cs ...prometheus.Collector) { r.cs = append(r.cs, cs...) }

func (r *collecting) Unregister(prometheus.Collector) bool { return false }

func definedNames() (names, hists []string) {
	reg := &collecting{}
	NewCoordinatorMetrics(reg)
	NewAgentMetrics(reg)
	cluster := NewClusterCollector(emptyView{})
	reg.MustRegister(cluster)
	reg.MustRegister(NewAutopilotCollector(func() *AutopilotView { return nil }), NewCertExpiryGauge(func() int64 { return 0 }),
		NewBlobCollector(nil), NewClockSkewCollector(nil), NewGossipNameConflicts(func() int64 { return 0 }))
	seen := map[string]bool{}
	for _, c := range reg.cs {
		hist := false
		switch c.(type) {
		case prometheus.Histogram, *prometheus.HistogramVec:
			hist = true
		}
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := descName.FindStringSubmatch(d.String())
			if m == nil || seen[m[1]] {
				continue
			}
			seen[m[1]] = true
			names = append(names, m[1])
			if hist || d == cluster.batchDuration {
				hists = append(hists, m[1])
			}
		}
	}
	sort.Strings(names)
	sort.Strings(hists)
	return names, hists
}

// emptyView is a ClusterView with nothing in it, for listing names.
type emptyView struct{}

func (emptyView) Batches(func(*vbatchv1.Batch)) {}
func (emptyView) Agents() []AgentView           { return nil }
func (emptyView) Raft() RaftView                { return RaftView{} }
func (emptyView) Now() time.Time                { return time.Time{} }
