package coordinator

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// BenchmarkRaftApply measures batch-state commands committed per second on
// a three-node loopback cluster: one client at a time, then 32 concurrent
// clients, each proposing through the leader and through a follower.
func BenchmarkRaftApply(b *testing.B) {
	nodes := startCluster(b, 3)
	leader := waitLeader(b, nodes)
	fol := follower(nodes)
	ctx := context.Background()
	var seq atomic.Int64
	cmd := func() *vbatchv1.RegisterAgent {
		n := seq.Add(1)
		return &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: fmt.Sprintf("agent-%d", n%64), Models: []string{"m"}, RpcAddr: "127.0.0.1:1"}}
	}
	for _, via := range []struct {
		name string
		node *Coordinator
	}{{"leader", leader}, {"follower", fol}} {
		for _, clients := range []int{1, 32} {
			b.Run(fmt.Sprintf("via=%s/clients=%d", via.name, clients), func(b *testing.B) {
				start := time.Now()
				var wg sync.WaitGroup
				var next atomic.Int64
				for c := 0; c < clients; c++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							if _, err := via.node.Apply(ctx, cmd()); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commands/s")
			})
		}
	}
}
