package monitoring

import (
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func itoa(i int) string { return strconv.Itoa(i) }

func registryWith(t *testing.T, cs ...prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			t.Fatalf("register: %v", err)
		}
	}
	return reg
}

// filtered is a collector passing on only the metrics of one family.
type filtered struct {
	c    prometheus.Collector
	name string
}

func (f filtered) Describe(ch chan<- *prometheus.Desc) { f.c.Describe(ch) }

func (f filtered) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 256)
	go func() { f.c.Collect(all); close(all) }()
	for m := range all {
		if descName.FindStringSubmatch(m.Desc().String())[1] == f.name {
			ch <- m
		}
	}
}

// onlyMetric returns a collector of the one metric of family name.
func onlyMetric(t *testing.T, c prometheus.Collector, name string) prometheus.Collector {
	t.Helper()
	return filtered{c: c, name: name}
}
