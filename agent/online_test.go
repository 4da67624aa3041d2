package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// breakingEngine answers online requests with the start of a stream, then
// fails as an engine dying mid-answer does.
type breakingEngine struct{ *fakeEngine }

func (e breakingEngine) Proxy(_ context.Context, _ string, _ []byte, w http.ResponseWriter) error {
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"par\"}}]}\n\n")
	w.(http.Flusher).Flush()
	return errors.New("proxy: read from engine: unexpected EOF")
}

// TestOnlineFailures: an unhealthy engine is not sent the request (503,
// for the coordinator to try another agent), and an answer the engine
// breaks off mid-stream reaches the client as a cut connection, not as a
// response that looks complete.
func TestOnlineFailures(t *testing.T) {
	coord := newFakeCoord(t, nil)
	fe := newFakeEngine()
	a := New(testConfig(t, coord, "agent-online"), breakingEngine{fe}, fakeGPUs{}, nil)
	runAgent(t, a)
	waitFor(t, "registered", func() bool { var n int; coord.with(func() { n = coord.registers }); return n > 0 })
	var base string
	coord.with(func() { base = "http://" + coord.registered["agent-online"].RpcAddr })

	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"test-model","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || rerr == nil {
		t.Fatalf("broken stream: status %d, body %q, read error %v; want the connection cut (a read error)", resp.StatusCode, b, rerr)
	}

	fe.mu.Lock()
	fe.healthy = false
	fe.mu.Unlock()
	resp, err = http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"test-model"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("engine down: %d %s, want 503 with an OpenAI error", resp.StatusCode, b)
	}
}
