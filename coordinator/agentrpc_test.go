package coordinator

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
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

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// TestSendInputLinesSendsWholeLinesOnly: the input stream carries whole
// lines from the requested one on; only the chunk's last line may lack
// its newline; a read that fails mid-line (a block that failed
// verification) or input that ends early sends no partial line.
func TestSendInputLinesSendsWholeLinesOnly(t *testing.T) {
	collect := func(r io.Reader, start, end, from int64) ([]string, int64, error) {
		var got []string
		first := int64(-1)
		err := sendInputLines(r, start, end, from, func(m *vbatchv1.ReadInputResponse) error {
			if first < 0 {
				first = m.FirstLine
			}
			for _, l := range m.Lines {
				got = append(got, string(l))
			}
			return nil
		})
		return got, first, err
	}
	got, first, err := collect(strings.NewReader("a\r\nb\nc"), 10, 13, 11)
	if err != nil || first != 11 || strings.Join(got, ",") != "b,c" {
		t.Fatalf("from line 11 of a file ending without a newline: %q from %d, %v", got, first, err)
	}
	bad := errors.New("block 3 hash mismatch")
	got, _, err = collect(&failingReader{data: []byte("a\nbb"), err: bad}, 0, 3, 0)
	if connect.CodeOf(err) != connect.CodeUnavailable || !errors.Is(err, bad) || slices.Contains(got, "bb") {
		t.Fatalf("read failing mid-line: sent %q, err %v; want no partial line and Unavailable", got, err)
	}
	got, _, err = collect(&failingReader{data: []byte("a\nbb"), err: bad}, 0, 2, 0)
	if connect.CodeOf(err) != connect.CodeUnavailable || slices.Contains(got, "bb") {
		t.Fatalf("read failing in the last line: sent %q, err %v", got, err)
	}
	got, _, err = collect(strings.NewReader("a\nb"), 0, 3, 0)
	if connect.CodeOf(err) != connect.CodeDataLoss || slices.Contains(got, "b") {
		t.Fatalf("input ending two lines early: sent %q, err %v", got, err)
	}
}

// TestCandidatesSkipBatchesPastWindowOnFSMTime: a batch whose window has
// ended on the FSM's time (the leader's, as of its latest command) is no
// lease candidate on a coordinator whose clock is still inside it. The
// FSM would refuse every grant on it (within_window), yet each refused
// grant is a committed raft entry, and a poll would propose them again on
// every wake.
func TestCandidatesSkipBatchesPastWindowOnFSMTime(t *testing.T) {
	h := fsm.NewHarness()
	h.MustApply(t, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: "a1", Models: []string{"m"}}})
	start := func(id string) {
		h.MustApply(t, &vbatchv1.CreateFile{File: &vbatchv1.File{Id: "file-" + id, Project: "p", Purpose: "batch", Lines: 1}})
		h.MustApply(t, &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{Id: "batch_" + id, Project: "p", InputFileId: "file-" + id}, WindowSeconds: 60})
		h.MustApply(t, &vbatchv1.StartBatch{BatchId: "batch_" + id, Model: "m", Total: 1,
			Chunks: []*vbatchv1.Chunk{{Index: 0, StartLine: 0, EndLine: 1, EndOffset: 10}}})
	}
	start("ended")
	h.Advance(time.Minute)
	start("open") // at the FSM's time, batch_ended's window has just ended
	// This coordinator's clock is two minutes behind the FSM's: inside
	// both windows.
	c := &Coordinator{fsm: h.FSM}
	c.cfg.clockOffset = h.Clock.Add(-2 * time.Minute).Sub(time.Now())
	s := &agentService{c: c}
	cands, registered := s.candidates("a1", []string{"m"})
	if !registered {
		t.Fatal("a1 is registered")
	}
	var ids []string
	for _, cand := range cands {
		ids = append(ids, cand.batch.Id)
	}
	if !slices.Equal(ids, []string{"batch_open"}) {
		t.Fatalf("candidates %v, want only batch_open: batch_ended's window ended on the FSM's time", ids)
	}
}
