package e2e

// The linearizability test's agent: it joins gossip as an agent, registers
// over the real AgentService RPC, and with a few workers leases chunks,
// streams their input, commits OpenAI-format output lines in parts and
// completes them, through coordinators it picks at random. It runs no
// engine. Every grant, part and completion is an operation in the
// history; now and then a worker stalls past the lease TTL before its next
// part, so that fencing by token is exercised.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/gossip"
	"github.com/vbatch/vbatch/internal/ids"
	"github.com/vbatch/vbatch/internal/tlsutil"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// linRPCTimeout bounds one AgentService call; past it the outcome is
// unknown.
const linRPCTimeout = 3 * time.Second

// linAgent is the test agent.
type linAgent struct {
	id      string
	rec     *linRecorder
	clients []vbatchv1connect.AgentServiceClient
	nodes   []string // coordinator ids, as clients
	pool    *gossip.Pool
	// stallP is the chance a lease stalls past the TTL before a part.
	stallP float64
	ttl    time.Duration

	mu     sync.Mutex
	stalls int
}

// startLinAgent joins gossip and registers agent id with the cluster; it
// leaves gossip when the test ends.
func startLinAgent(t testing.TB, cc *chaosCluster, rec *linRecorder, id string) *linAgent {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	a := &linAgent{id: id, rec: rec, stallP: 0.1, ttl: chaosLeaseTTL}
	var gossipAddrs []string
	for _, co := range cc.Coords {
		a.clients = append(a.clients, vbatchv1connect.NewAgentServiceClient(hc, "http://"+co.RPC))
		a.nodes = append(a.nodes, co.ID)
		gossipAddrs = append(gossipAddrs, co.Gossip)
	}
	pool, err := gossip.Start(gossip.Config{
		Name:     id,
		BindAddr: fmt.Sprintf("127.0.0.1:%d", FreePorts(t, 1)[0]),
		Meta:     gossip.Meta{Role: gossip.RoleAgent, Models: []string{"sim-model"}},
		// The coordinators label gossip with their cluster name.
		Label: tlsutil.DefaultCluster,
	})
	if err != nil {
		t.Fatalf("agent %s gossip: %v", id, err)
	}
	a.pool = pool
	t.Cleanup(func() { _ = pool.Leave(time.Second) })
	WaitFor(t, 30*time.Second, id+" joined gossip", func() bool {
		_, err := pool.Join(gossipAddrs)
		return err == nil
	})
	attempt := 0
	WaitFor(t, 30*time.Second, id+" registered", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), linRPCTimeout)
		defer cancel()
		attempt++
		_, err := a.clients[attempt%len(a.clients)].Register(ctx, connect.NewRequest(&vbatchv1.RegisterRequest{
			Agent: &vbatchv1.Agent{Id: id, Models: []string{"sim-model"}, MaxLeases: 8},
		}))
		return err == nil
	})
	return a
}

// rejoin keeps the agent in gossip: after every coordinator died at once
// nobody remembers it, and the leader would take its leases as dead.
func (a *linAgent) rejoin(ctx context.Context, gossipAddrs []string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		if len(a.pool.MembersWithRole(gossip.RoleCoordinator)) < len(gossipAddrs) {
			_, _ = a.pool.Join(gossipAddrs)
		}
	}
}

// linRPCResult classifies an AgentService error as the FSM's rejections
// map to connect codes (coordinator/agentrpc.go rpcError).
func linRPCResult(err error) linResult {
	if err == nil {
		return resOK
	}
	switch connect.CodeOf(err) {
	case connect.CodeFailedPrecondition:
		return resStale
	case connect.CodeAborted:
		return resConflict
	case connect.CodeNotFound:
		return resNotFound
	case connect.CodeInvalidArgument, connect.CodePermissionDenied, connect.CodeUnauthenticated:
		return resRefused
	}
	return resUnknown
}

// client picks a coordinator for one call.
func (a *linAgent) client(rng *rand.Rand) (string, vbatchv1connect.AgentServiceClient) {
	i := rng.IntN(len(a.clients))
	return a.nodes[i], a.clients[i]
}

// work is one lease worker, recorded as client id, until ctx ends.
func (a *linAgent) work(ctx context.Context, client int, rng *rand.Rand) {
	// One lease attempt may take several calls: every call after the
	// first asks for a lease an earlier call was granted while its answer
	// was lost, so the attempt is one operation from its first call to
	// its answer.
	var attempt string
	var call int64
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, linRPCTimeout)
		node, cl := a.client(rng)
		retry := attempt != ""
		if !retry {
			attempt, call = fmt.Sprintf("%s-%d-%d", a.id, client, rng.Uint64()), a.rec.now()
		}
		resp, err := cl.Lease(cctx, connect.NewRequest(&vbatchv1.LeaseRequest{
			AgentId: a.id, Models: []string{"sim-model"}, WaitMs: 1000, RequestId: attempt, Retry: retry,
		}))
		cancel()
		if err == nil {
			attempt = ""
		}
		if err != nil {
			if ctx.Err() == nil && linRPCResult(err) == resUnknown {
				a.rec.mu.Lock()
				a.rec.ambiguousLeases++
				a.rec.mu.Unlock()
			}
			linPause(ctx, 20*time.Millisecond)
			continue
		}
		l := resp.Msg
		if !l.Granted {
			continue
		}
		a.rec.add(linOp{Client: client, Call: call, BatchID: l.BatchId, Node: node,
			In:  linInput{Kind: linGrant, Chunk: l.Chunk, Token: l.Token, From: l.StartLine, To: l.EndLine},
			Out: linOutput{Result: resOK, Progress: l.Progress}})
		a.runLease(ctx, client, rng, l)
	}
}

// runLease reads a granted chunk's input, commits it in parts and
// completes it. It gives the lease up on a definite refusal, or after
// three unknown outcomes of one call.
func (a *linAgent) runLease(ctx context.Context, client int, rng *rand.Rand, l *vbatchv1.LeaseResponse) {
	var cids []string
	if l.Progress < l.EndLine {
		// A chunk whose lines are all committed (its last holder did not
		// complete it) only needs completing.
		var err error
		if cids, err = a.readInput(ctx, rng, l); err != nil {
			return
		}
	}
	stallAt := int64(-1)
	if l.Progress < l.EndLine && rng.Float64() < a.stallP {
		stallAt = l.Progress + int64(rng.IntN(int(l.EndLine-l.Progress)))
	}
	// Half the leases ask their last part to complete the chunk, as real
	// agents do; the others commit it and then call Complete, as agents
	// did before.
	completeWithPart := rng.IntN(2) == 0
	done := false
	for from := l.Progress; from < l.EndLine; {
		to := min(from+linPartLines, l.EndLine)
		if stallAt >= from && stallAt < to {
			a.mu.Lock()
			a.stalls++
			a.mu.Unlock()
			linPause(ctx, a.ttl+500*time.Millisecond)
		}
		out, body := linOutputLines(l.BatchId, cids[from-l.Progress:to-l.Progress])
		req := &vbatchv1.PutResultsRequest{
			BatchId: l.BatchId, Chunk: l.Chunk, Token: l.Token, FromLine: from, ToLine: to,
			Output: body, Succeeded: to - from, Usage: out,
			Complete: completeWithPart && to == l.EndLine,
		}
		res := a.retry(ctx, func() linResult {
			node, cl := a.client(rng)
			op := linOp{Client: client, BatchID: l.BatchId, Node: node, Call: a.rec.now(),
				In: linInput{Kind: linPut, Chunk: l.Chunk, Token: l.Token, From: from, To: to, Complete: req.Complete}}
			cctx, cancel := context.WithTimeout(ctx, linRPCTimeout)
			resp, err := cl.PutResults(cctx, connect.NewRequest(req))
			cancel()
			op.Out = linOutput{Result: linRPCResult(err)}
			if err != nil {
				op.Out.Detail = err.Error()
			} else {
				op.Out.Progress, op.Out.Done = resp.Msg.Progress, resp.Msg.Completed
				done = resp.Msg.Completed
			}
			a.rec.add(op)
			return op.Out.Result
		})
		if res != resOK {
			return
		}
		from = to
	}
	if done {
		return
	}
	a.retry(ctx, func() linResult {
		node, cl := a.client(rng)
		op := linOp{Client: client, BatchID: l.BatchId, Node: node, Call: a.rec.now(),
			In: linInput{Kind: linComplete, Chunk: l.Chunk, Token: l.Token}}
		cctx, cancel := context.WithTimeout(ctx, linRPCTimeout)
		_, err := cl.Complete(cctx, connect.NewRequest(&vbatchv1.CompleteRequest{
			BatchId: l.BatchId, Chunk: l.Chunk, Token: l.Token,
		}))
		cancel()
		op.Out = linOutput{Result: linRPCResult(err)}
		if err != nil {
			op.Out.Detail = err.Error()
		}
		a.rec.add(op)
		return op.Out.Result
	})
}

// retry runs call until its outcome is known, at most three times.
func (a *linAgent) retry(ctx context.Context, call func() linResult) linResult {
	res := resUnknown
	for i := 0; i < 3 && ctx.Err() == nil; i++ {
		if res = call(); res != resUnknown {
			return res
		}
		linPause(ctx, 50*time.Millisecond)
	}
	return res
}

// readInput streams the chunk's unfinished lines and returns their
// custom_ids, retrying through other coordinators for up to one TTL.
func (a *linAgent) readInput(ctx context.Context, rng *rand.Rand, l *vbatchv1.LeaseResponse) ([]string, error) {
	deadline := time.Now().Add(a.ttl)
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cids, err := a.readOnce(ctx, rng, l)
		if err == nil {
			return cids, nil
		}
		lastErr = err
		if linRPCResult(err) != resUnknown {
			return nil, err
		}
		linPause(ctx, 50*time.Millisecond)
	}
	return nil, fmt.Errorf("read input of %s/%d: %w", l.BatchId, l.Chunk, lastErr)
}

func (a *linAgent) readOnce(ctx context.Context, rng *rand.Rand, l *vbatchv1.LeaseResponse) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, linRPCTimeout)
	defer cancel()
	_, cl := a.client(rng)
	stream, err := cl.ReadInput(cctx, connect.NewRequest(&vbatchv1.ReadInputRequest{
		BatchId: l.BatchId, Chunk: l.Chunk, Token: l.Token, FromLine: l.Progress,
	}))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var cids []string
	for stream.Receive() {
		msg := stream.Msg()
		for i, raw := range msg.Lines {
			if n := msg.FirstLine + int64(i); n != l.Progress+int64(len(cids)) {
				return nil, fmt.Errorf("input stream sent line %d, want %d", n, l.Progress+int64(len(cids)))
			}
			var in struct {
				CustomID string `json:"custom_id"`
			}
			if err := json.Unmarshal(raw, &in); err != nil {
				return nil, fmt.Errorf("input line %d: %w", msg.FirstLine+int64(i), err)
			}
			cids = append(cids, in.CustomID)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if int64(len(cids)) != l.EndLine-l.Progress {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("input stream ended early"))
	}
	return cids, nil
}

// linOutputLines renders one OpenAI batch output line per custom_id, as
// an agent writes a successful chat completion, and the usage they sum to.
func linOutputLines(batchID string, customIDs []string) (*vbatchv1.Usage, []byte) {
	var b []byte
	for _, cid := range customIDs {
		line, _ := json.Marshal(map[string]any{
			"id":        ids.New("batch_req_"),
			"custom_id": cid,
			"response": map[string]any{
				"status_code": 200,
				"request_id":  ids.New("req_"),
				"body": map[string]any{
					"id": ids.New("chatcmpl-"), "object": "chat.completion", "created": time.Now().Unix(), "model": "sim-model",
					"choices": []any{map[string]any{
						"index": 0, "finish_reason": "stop",
						"message": map[string]any{"role": "assistant", "content": "ok " + batchID},
					}},
					"usage": map[string]any{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
				},
			},
			"error": nil,
		})
		b = append(append(b, line...), '\n')
	}
	n := int64(len(customIDs))
	return &vbatchv1.Usage{InputTokens: n, OutputTokens: n, TotalTokens: 2 * n}, b
}

// linPause waits d or until ctx ends.
func linPause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
