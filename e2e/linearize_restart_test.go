package e2e

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// TestLinearizabilityRestartReads is the focused form of one fault of
// TestLinearizability: every coordinator is SIGKILLed and restarted while
// many clients issue consistent reads of batches whose creates were
// acknowledged before, through every coordinator, each read giving up
// after 20ms so that reads keep arriving while the new leader takes over.
// The history (creates and reads) is checked with the same model. A
// consistent read answered from a state older than an acknowledged create
// ("no such batch") is a violation.
func TestLinearizabilityRestartReads(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: runs real processes")
	}
	const (
		batches = 30
		readers = 30 // per coordinator
		rounds  = 6
	)
	cc := &chaosCluster{Cluster: StartCluster(t, 3, ClusterOptions{Extra: []string{
		"--lease-ttl", chaosLeaseTTL.String(), "--chunk-size", strconv.Itoa(linChunkSize),
	}}), banked: make([]int64, 3)}
	rec := newLinRecorder()
	t.Logf("history times are seconds since %s (UTC, as in the coordinators' logs)", rec.start.UTC().Format("15:04:05.000000"))
	creator := len(cc.Coords) * readers
	var ids []string
	for i := 0; len(ids) < batches; i++ {
		key := fmt.Sprintf("r-%d", i)
		co := cc.Coords[i%len(cc.Coords)]
		fileID, err := chaosUpload(co.URL(), key+".jsonl", chaosLines(key, linMinLines))
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		if id, res := rec.create(creator, co, key, fileID, linMinLines); res == resOK {
			ids = append(ids, id)
		} else if i > 2*batches {
			t.Fatalf("creates keep failing: %s", res)
		}
	}
	hc := &http.Client{Timeout: 20 * time.Millisecond, Transport: &http.Transport{MaxIdleConnsPerHost: 2 * readers}}
	var faults []linFault
	for round := 0; round < rounds; round++ {
		f := linFault{Kind: "kill-all-coordinators", Target: "c1,c2,c3", Start: rec.now()}
		for _, co := range cc.Coords {
			co.Kill()
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, co := range cc.Coords {
			for g := 0; g < readers; g++ {
				client := i*readers + g
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						// Reader g always reads one batch: few reads of
						// a batch overlap, which keeps porcupine's search
						// small.
						out := rec.read(hc, client, co, "", ids[client%len(ids)])
						if out.Result == resUnknown {
							linPause(t.Context(), 5*time.Millisecond)
						}
					}
				}()
			}
		}
		time.Sleep(300 * time.Millisecond)
		for _, co := range cc.Coords {
			co.Restart(t)
		}
		cc.WaitLeader(30 * time.Second)
		time.Sleep(500 * time.Millisecond)
		close(stop)
		wg.Wait()
		f.End = rec.now()
		faults = append(faults, f)
	}

	all, err := rec.listAll(t.Context(), creator, cc.Coords[cc.WaitLeader(10*time.Second)])
	if err != nil {
		t.Fatalf("final listing: %v", err)
	}
	keyOf := map[string]string{}
	for _, b := range all {
		keyOf[b.ID] = b.Metadata[linMetaKey]
	}
	rec.mu.Lock()
	ops := append([]linOp(nil), rec.ops...)
	rec.mu.Unlock()
	hist, err := linHistory(ops, keyOf)
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	t.Logf("operations: %s", linTally(ops))
	dir := os.Getenv("VBATCH_LIN_ARTIFACTS")
	keep := dir != ""
	if !keep {
		dir = t.TempDir()
	} else if err := linKeep(dir, ops, cc); err != nil {
		t.Errorf("keep artifacts: %v", err)
	}
	v, err := linCheck(hist, faults, creator+1, time.Minute, dir, false)
	if err != nil {
		t.Errorf("check: %v", err)
	}
	t.Logf("porcupine: %s in %s over %d operations", v.Result, v.Took.Round(time.Millisecond), len(hist))
	if v.Visualization != "" {
		t.Logf("visualization: %s", v.Visualization)
	}
	switch v.Result {
	case porcupine.Illegal:
		for _, p := range v.Illegal {
			t.Errorf("not linearizable:\n%s", p)
		}
	case porcupine.Unknown:
		t.Errorf("porcupine could not decide within its timeout")
	}
}
