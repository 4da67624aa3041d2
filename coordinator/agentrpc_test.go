package coordinator

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// slowStart is a ReadInput that prepares for a while before it sends.
type slowStart struct {
	vbatchv1connect.UnimplementedAgentServiceHandler
	prepare time.Duration
}

func (s slowStart) ReadInput(ctx context.Context, _ *connect.Request[vbatchv1.ReadInputRequest], stream *connect.ServerStream[vbatchv1.ReadInputResponse]) error {
	if err := whileKeptAlive(ctx, stream, func() error { time.Sleep(s.prepare); return nil }); err != nil {
		return err
	}
	return stream.Send(&vbatchv1.ReadInputResponse{FirstLine: 0, Lines: [][]byte{[]byte("line")}})
}

// TestReadInputKeepsAliveWhilePreparing: while ReadInput prepares (fetching
// the input from a peer), the agent gets empty messages, so its idle
// timeout does not take the slow start for a hung coordinator.
func TestReadInputKeepsAliveWhilePreparing(t *testing.T) {
	old := readKeepalive
	readKeepalive = 20 * time.Millisecond
	defer func() { readKeepalive = old }()
	mux := http.NewServeMux()
	mux.Handle(vbatchv1connect.NewAgentServiceHandler(slowStart{prepare: 200 * time.Millisecond}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cl := vbatchv1connect.NewAgentServiceClient(srv.Client(), srv.URL)
	stream, err := cl.ReadInput(context.Background(), connect.NewRequest(&vbatchv1.ReadInputRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	empty, lines := 0, 0
	for stream.Receive() {
		if n := len(stream.Msg().Lines); n == 0 {
			empty++
		} else {
			lines += n
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if empty < 2 || lines != 1 {
		t.Fatalf("%d keepalives and %d lines, want at least 2 keepalives, then the line", empty, lines)
	}
}

// TestOthersServing: another agent serves a model when it is alive with a
// loaded engine, registered for the model and not draining.
func TestOthersServing(t *testing.T) {
	st := &fsm.State{Agents: map[string]*vbatchv1.Agent{
		"a": {Id: "a", Models: []string{"m"}},
		"b": {Id: "b", Models: []string{"m"}},
		"c": {Id: "c", Models: []string{"m"}, Draining: true},
		"d": {Id: "d", Models: []string{"other"}},
	}}
	alive := map[string]bool{"a": true, "b": true, "c": true, "d": true}
	if !othersServing(st, alive, "a", "m") {
		t.Fatal("b serves m beside a")
	}
	alive["b"] = false // dead, or its engine is not loaded
	if othersServing(st, alive, "a", "m") {
		t.Fatal("only a draining agent and one of another model are left, yet others serve m")
	}
	if !engineLoaded(nil) || !engineLoaded(&vbatchv1.TelemetryRequest{}) {
		t.Fatal("no report yet must not read as unloaded")
	}
	if engineLoaded(&vbatchv1.TelemetryRequest{Engines: []*vbatchv1.EngineStats{{Loaded: false}}}) {
		t.Fatal("an engine reported not loaded reads as loaded")
	}
}
