package monitoring

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func TestStartProfilingOffWithoutAddress(t *testing.T) {
	t.Setenv(EnvPyroscopeServerAddress, "")
	stop, err := StartProfiling("agent", nil)
	if err != nil {
		t.Fatal(err)
	}
	stop()
}

func TestStartProfilingPushesOnStop(t *testing.T) {
	var mu sync.Mutex
	apps := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		apps[r.URL.Path+" "+r.URL.Query().Get("name")] = true
		mu.Unlock()
	}))
	defer srv.Close()
	t.Setenv(EnvPyroscopeServerAddress, srv.URL)
	stop, err := StartProfiling("coordinator", nil)
	if err != nil {
		t.Fatal(err)
	}
	stop() // flushes what was collected
	mu.Lock()
	defer mu.Unlock()
	for k := range apps {
		if strings.HasPrefix(k, "/ingest vbatch.coordinator{") && strings.Contains(k, "version=") {
			return
		}
	}
	t.Fatalf("no vbatch.coordinator profile pushed to /ingest: %v", apps)
}
