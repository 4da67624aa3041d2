package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/agent/gpu"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// fakeCoord is an in-memory AgentService with one batch of one chunk. It
// enforces the lease protocol's rules (live token, parts contiguous from
// progress) and records every violation a test may assert on.
type fakeCoord struct {
	t *testing.T

	mu         sync.Mutex
	lines      [][]byte
	registered map[string]*vbatchv1.Agent
	registers  int
	state      string // pending, leased, done, released
	token      uint64
	progress   int64
	dead       map[uint64]bool // tokens the server told the agent are gone
	parts      []*vbatchv1.PutResultsRequest
	completes  int
	releases   []string
	// releaseReqs are the Release requests, with their crash fields.
	releaseReqs []*vbatchv1.ReleaseRequest
	leases      int
	// leaseReqs are the Lease requests, in order.
	leaseReqs []*vbatchv1.LeaseRequest
	// loseGrants is how many grants the fake makes and then answers with
	// an error, as if the answer were lost on the way; a retry of the
	// same attempt (retry set, same request id) gets the grant again,
	// counted in resumed.
	loseGrants int
	grantReq   string
	grantResp  *vbatchv1.LeaseResponse
	resumed    int
	telemetry  []*vbatchv1.TelemetryRequest
	attached   []string
	violations []string
	putCalls   int
	renewMs    int64

	// completeWithPart makes the fake complete the chunk with a part that
	// asks for it, as current coordinators do; unset, it ignores the
	// request, as coordinators that predate it did. partCompletes counts
	// those completions.
	completeWithPart bool
	partCompletes    int

	// attachGate, when set before the agent starts, holds Attach's first
	// answer until it is closed.
	attachGate chan struct{}

	// Hooks, set before the agent starts; called with mu held.
	leaseHook func(f *fakeCoord, resp *vbatchv1.LeaseResponse)
	renewHook func(f *fakeCoord) vbatchv1.LeaseVerdict
	putHook   func(f *fakeCoord, req *vbatchv1.PutResultsRequest) error
	// inputHook picks where a ReadInput stream from line from, taken by
	// the named server (see serveAs), stops sending: it then hangs, open,
	// until the client gives up. A line at or past the end never stalls.
	inputHook func(f *fakeCoord, server string, from int64) (stallAt int64)

	// reads records every ReadInput as "server@from".
	reads []string
	// unhang releases stalled streams when the test ends, so its servers
	// can close.
	unhang     chan struct{}
	unhangOnce sync.Once
}

var _ vbatchv1connect.AgentServiceHandler = (*fakeCoord)(nil)

const (
	fakeBatch = "batch_test"
	fakeModel = "test-model"
)

func newFakeCoord(t *testing.T, lines [][]byte) *fakeCoord {
	return &fakeCoord{t: t, lines: lines, registered: map[string]*vbatchv1.Agent{}, state: "pending", dead: map[uint64]bool{}, renewMs: 30, unhang: make(chan struct{})}
}

// serve starts the fake on a loopback port and returns its address.
func (f *fakeCoord) serve(t *testing.T) string { return f.serveAs(t, "") }

// serverKey carries the name of the server that took a call.
type serverKey struct{}

// serveAs starts one more server of the same fake, as one coordinator of
// several sharing one state, and returns its address. Its calls carry name
// (ReadInput records it and passes it to inputHook).
func (f *fakeCoord) serveAs(t *testing.T, name string) string {
	mux := http.NewServeMux()
	path, h := vbatchv1connect.NewAgentServiceHandler(f)
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), serverKey{}, name)))
	}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { f.unhangOnce.Do(func() { close(f.unhang) }) }) // runs first
	return srv.Listener.Addr().String()
}

func (f *fakeCoord) with(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

// checkToken refuses a token that is not the live lease, and records a
// violation when the agent uses a token it was told is gone.
func (f *fakeCoord) checkToken(op string, token uint64) error {
	if f.dead[token] {
		f.violations = append(f.violations, fmt.Sprintf("%s with dead token %d", op, token))
	}
	if f.state != "leased" || token != f.token || f.dead[token] {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("chunk %s/0 token %d: stale fencing token", fakeBatch, token))
	}
	return nil
}

func (f *fakeCoord) Register(_ context.Context, req *connect.Request[vbatchv1.RegisterRequest]) (*connect.Response[vbatchv1.RegisterResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registered[req.Msg.Agent.Id] = req.Msg.Agent
	f.registers++
	return connect.NewResponse(&vbatchv1.RegisterResponse{LeaseTtlMs: 2000, RenewIntervalMs: f.renewMs}), nil
}

func (f *fakeCoord) Lease(ctx context.Context, req *connect.Request[vbatchv1.LeaseRequest]) (*connect.Response[vbatchv1.LeaseResponse], error) {
	f.mu.Lock()
	f.leases++
	f.leaseReqs = append(f.leaseReqs, proto.CloneOf(req.Msg))
	if req.Msg.Retry && f.state == "leased" && f.grantReq != "" && req.Msg.RequestId == f.grantReq {
		f.resumed++
		resp := proto.CloneOf(f.grantResp)
		f.mu.Unlock()
		return connect.NewResponse(resp), nil
	}
	ag, ok := f.registered[req.Msg.AgentId]
	if !ok {
		f.mu.Unlock()
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("agent %s is not registered", req.Msg.AgentId))
	}
	if f.state == "pending" && len(f.lines) > 0 && !ag.Draining {
		f.state = "leased"
		f.token += 7
		resp := &vbatchv1.LeaseResponse{
			Granted: true, BatchId: fakeBatch, Chunk: 0, Token: f.token, Endpoint: "/v1/chat/completions",
			Model: fakeModel, StartLine: 0, EndLine: int64(len(f.lines)), Progress: f.progress,
			ExpiresAtUnixMs: time.Now().Add(2 * time.Second).UnixMilli(),
		}
		if f.leaseHook != nil {
			f.leaseHook(f, resp)
		}
		f.grantReq, f.grantResp = req.Msg.RequestId, proto.CloneOf(resp)
		if f.loseGrants > 0 {
			f.loseGrants--
			f.mu.Unlock()
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("answer lost"))
		}
		f.mu.Unlock()
		return connect.NewResponse(resp), nil
	}
	f.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
	case <-time.After(time.Duration(req.Msg.WaitMs) * time.Millisecond):
		return connect.NewResponse(&vbatchv1.LeaseResponse{}), nil
	}
}

func (f *fakeCoord) Renew(_ context.Context, req *connect.Request[vbatchv1.RenewRequest]) (*connect.Response[vbatchv1.RenewResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkToken("renew", req.Msg.Token); err != nil {
		return connect.NewResponse(&vbatchv1.RenewResponse{Verdict: vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED}), nil
	}
	v := vbatchv1.LeaseVerdict_LEASE_VERDICT_OK
	if f.renewHook != nil {
		v = f.renewHook(f)
	}
	if v == vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED {
		f.dead[req.Msg.Token] = true
	}
	return connect.NewResponse(&vbatchv1.RenewResponse{Verdict: v, ExpiresAtUnixMs: time.Now().Add(2 * time.Second).UnixMilli()}), nil
}

func (f *fakeCoord) ReadInput(ctx context.Context, req *connect.Request[vbatchv1.ReadInputRequest], stream *connect.ServerStream[vbatchv1.ReadInputResponse]) error {
	server, _ := ctx.Value(serverKey{}).(string)
	f.mu.Lock()
	err := f.checkToken("read input", req.Msg.Token)
	lines := f.lines
	f.reads = append(f.reads, fmt.Sprintf("%s@%d", server, req.Msg.FromLine))
	stallAt := int64(len(lines))
	if f.inputHook != nil {
		stallAt = min(stallAt, f.inputHook(f, server, req.Msg.FromLine))
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	const batch = 64
	for from := req.Msg.FromLine; from < stallAt; from += batch {
		to := min(from+batch, stallAt)
		if err := stream.Send(&vbatchv1.ReadInputResponse{FirstLine: from, Lines: lines[from:to]}); err != nil {
			return err
		}
	}
	if stallAt < int64(len(lines)) {
		select { // a hung coordinator: the stream stays open, silent
		case <-ctx.Done():
		case <-f.unhang:
		}
		return connect.NewError(connect.CodeUnavailable, errors.New("stalled stream ended"))
	}
	return nil
}

func (f *fakeCoord) PutResults(_ context.Context, req *connect.Request[vbatchv1.PutResultsRequest]) (*connect.Response[vbatchv1.PutResultsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := req.Msg
	f.putCalls++
	if err := f.checkToken("put results", m.Token); err != nil {
		return nil, err
	}
	if f.putHook != nil {
		if err := f.putHook(f, m); err != nil {
			return nil, err
		}
	}
	if m.FromLine != f.progress || m.ToLine <= m.FromLine || m.ToLine > int64(len(f.lines)) {
		f.violations = append(f.violations, fmt.Sprintf("part [%d,%d) at progress %d", m.FromLine, m.ToLine, f.progress))
		return nil, connect.NewError(connect.CodeAborted, errors.New("part not contiguous"))
	}
	out, errs := countLines(m.Output), countLines(m.Errors)
	if out != m.Succeeded || errs != m.Failed || out+errs != m.ToLine-m.FromLine {
		f.violations = append(f.violations, fmt.Sprintf("part [%d,%d): %d output lines (succeeded %d), %d error lines (failed %d)", m.FromLine, m.ToLine, out, m.Succeeded, errs, m.Failed))
	}
	if m.Complete && m.ToLine != int64(len(f.lines)) {
		f.violations = append(f.violations, fmt.Sprintf("part [%d,%d) asks to complete a chunk of %d lines", m.FromLine, m.ToLine, len(f.lines)))
	}
	f.parts = append(f.parts, m)
	f.progress = m.ToLine
	resp := &vbatchv1.PutResultsResponse{Progress: f.progress}
	if f.completeWithPart && m.Complete {
		f.partCompletes++
		f.state = "done"
		resp.Completed = true
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeCoord) Complete(_ context.Context, req *connect.Request[vbatchv1.CompleteRequest]) (*connect.Response[vbatchv1.CompleteResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkToken("complete", req.Msg.Token); err != nil {
		return nil, err
	}
	if f.progress != int64(len(f.lines)) {
		f.violations = append(f.violations, fmt.Sprintf("complete at progress %d of %d", f.progress, len(f.lines)))
		return nil, connect.NewError(connect.CodeAborted, errors.New("chunk not fully committed"))
	}
	f.completes++
	f.state = "done"
	return connect.NewResponse(&vbatchv1.CompleteResponse{}), nil
}

func (f *fakeCoord) Release(_ context.Context, req *connect.Request[vbatchv1.ReleaseRequest]) (*connect.Response[vbatchv1.ReleaseResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkToken("release", req.Msg.Token); err != nil {
		return nil, err
	}
	f.releases = append(f.releases, req.Msg.Reason)
	f.releaseReqs = append(f.releaseReqs, req.Msg)
	f.state = "released"
	return connect.NewResponse(&vbatchv1.ReleaseResponse{}), nil
}

func (f *fakeCoord) Telemetry(_ context.Context, req *connect.Request[vbatchv1.TelemetryRequest]) (*connect.Response[vbatchv1.TelemetryResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.telemetry = append(f.telemetry, req.Msg)
	return connect.NewResponse(&vbatchv1.TelemetryResponse{}), nil
}

// Attach counts the agent's attachments, answers at once as coordinators
// do, and holds each until it ends.
func (f *fakeCoord) Attach(ctx context.Context, req *connect.Request[vbatchv1.AttachRequest], stream *connect.ServerStream[vbatchv1.AttachResponse]) error {
	f.mu.Lock()
	f.attached = append(f.attached, req.Msg.AgentId)
	gate := f.attachGate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := stream.Send(&vbatchv1.AttachResponse{}); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

func countLines(b []byte) int64 { return int64(bytes.Count(b, []byte("\n"))) }

// fakeEngine answers batch requests through do; by default every request
// succeeds with a small chat completion.
type fakeEngine struct {
	mu        sync.Mutex
	healthy   bool
	attempts  map[int]int // input line → engine calls
	cancelled int         // calls that ended because their context did
	do        func(ctx context.Context, line int) (int, []byte, error)
	proxied   []string
	metrics   string
	started   bool
	stopped   bool
}

var _ engine.Engine = (*fakeEngine)(nil)

func newFakeEngine() *fakeEngine {
	return &fakeEngine{healthy: true, attempts: map[int]int{}}
}

// okBody is the default engine answer for a line.
func okBody(line int) []byte {
	return fmt.Appendf(nil, `{"id":"chatcmpl-%d","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"answer %d"}}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`, line, line)
}

func (e *fakeEngine) Do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	var req struct {
		Line int `json:"line"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return http.StatusBadRequest, []byte(`{"error":{"message":"bad json"}}`), nil
	}
	e.mu.Lock()
	e.attempts[req.Line]++
	do := e.do
	e.mu.Unlock()
	if do == nil {
		return http.StatusOK, okBody(req.Line), nil
	}
	status, b, err := do(ctx, req.Line)
	if ctx.Err() != nil {
		e.mu.Lock()
		e.cancelled++
		e.mu.Unlock()
	}
	return status, b, err
}

func (e *fakeEngine) Proxy(_ context.Context, path string, body []byte, w http.ResponseWriter) error {
	e.mu.Lock()
	e.proxied = append(e.proxied, path)
	e.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, err := fmt.Fprintf(w, `{"proxied":%q,"bytes":%d}`, path, len(body))
	return err
}

func (e *fakeEngine) Models() []string { return []string{fakeModel} }

func (e *fakeEngine) Stats(context.Context) (engine.Stats, error) { return engine.Stats{}, nil }

func (e *fakeEngine) MetricsURL() string { return e.metrics }

func (e *fakeEngine) Start(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = true
	return nil
}

func (e *fakeEngine) Stop(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopped = true
	return nil
}

func (e *fakeEngine) Healthy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.healthy
}

func (e *fakeEngine) attemptsOf(line int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.attempts[line]
}

// fakeGPUs reports two GPUs.
type fakeGPUs struct{}

func (fakeGPUs) Discover() ([]gpu.Info, error) { return make([]gpu.Info, 2), nil }
func (fakeGPUs) Close() error                  { return nil }
