package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// agentService is the lease protocol's server side. Any coordinator serves
// it: reads come from local state, writes go through Apply.
type agentService struct {
	c *Coordinator

	mu        sync.Mutex
	telemetry map[string]*AgentTelemetry
}

// AgentTelemetry is the latest telemetry an agent sent (soft state, not
// replicated through raft).
type AgentTelemetry struct {
	Report     *vbatchv1.TelemetryRequest
	ReceivedAt time.Time
}

var _ vbatchv1connect.AgentServiceHandler = (*agentService)(nil)

// One ReadInput message carries at most readBatchLines input lines, and
// is sent once it holds readBatchBytes, so that long lines (big prompts,
// images) keep messages, and what an agent holds in flight, small.
const (
	readBatchLines = 256
	readBatchBytes = 1 << 20
)

func (s *agentService) ttl() time.Duration { return s.c.cfg.LeaseTTL }

// Register records an agent.
func (s *agentService) Register(ctx context.Context, req *connect.Request[vbatchv1.RegisterRequest]) (*connect.Response[vbatchv1.RegisterResponse], error) {
	a := req.Msg.GetAgent()
	if a == nil || a.Id == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("agent id required"))
	}
	if err := s.authorizeAgent(ctx, a.Id); err != nil {
		return nil, err
	}
	if err := s.c.checkAgentID(a.Id); err != nil {
		s.c.log.Error("refused to register an agent under a coordinator's node id", "agent", a.Id, "rpc_addr", a.RpcAddr, "err", err)
		return nil, err
	}
	a = proto.Clone(a).(*vbatchv1.Agent)
	a.RegisteredAt = s.c.Now().Unix()
	if _, err := s.c.Apply(ctx, &vbatchv1.RegisterAgent{Agent: a}); err != nil {
		return nil, rpcError(err)
	}
	ttl := s.ttl()
	return connect.NewResponse(&vbatchv1.RegisterResponse{
		LeaseTtlMs:      ttl.Milliseconds(),
		RenewIntervalMs: (ttl / 3).Milliseconds(),
	}), nil
}

// Lease waits up to wait_ms for a pending chunk of a model the agent
// serves and grants it. Concurrent agents may race for one chunk: the FSM
// grants it to one, the others try the next candidate.
func (s *agentService) Lease(ctx context.Context, req *connect.Request[vbatchv1.LeaseRequest]) (*connect.Response[vbatchv1.LeaseResponse], error) {
	m := req.Msg
	if err := s.authorizeAgent(ctx, m.AgentId); err != nil {
		return nil, err
	}
	wait := time.Duration(m.WaitMs) * time.Millisecond
	if wait <= 0 || wait > time.Minute {
		wait = 10 * time.Second
	}
	deadline := time.Now().Add(wait)
	// The leader expires the leases of agents gossip does not list; one
	// granted now would be taken back on its next look. A new agent is
	// usually listed a moment after it joined, and one that gossip
	// declared dead refutes it within seconds once it can be reached
	// again: the poll waits for that rather than send the agent into its
	// error back-off, which would idle it for seconds after it appeared.
	if !s.waitListed(ctx, m.AgentId, deadline) {
		if ctx.Err() != nil {
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("agent %s is not alive in gossip yet; retry once it has (re)joined", m.AgentId))
	}
	if m.Retry && m.RequestId != "" {
		resp, err := s.resumeGrant(ctx, m.AgentId, m.RequestId)
		if err != nil || resp != nil {
			return connect.NewResponse(resp), err
		}
	}
	grant := &vbatchv1.GrantLease{AgentId: m.AgentId}
	if s.c.clusterAtFSMLevel(fsm.LevelLeaseRequestID) {
		grant.RequestId = m.RequestId
	}
	grant.WithinWindow = s.c.clusterAtFSMLevel(fsm.LevelExpiryChecks)
	if s.c.clusterAtFSMLevel(fsm.LevelLeaseTTL) {
		// The lease's end is the leader's time plus the TTL: this node's
		// clock, however far off, does not decide it.
		grant.TtlMs = s.ttl().Milliseconds()
	}
	for {
		watch := s.c.fsm.Watch()
		cands, registered := s.candidates(m.AgentId, m.Models)
		if !registered {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("agent %s is not registered", m.AgentId))
		}
		for _, cand := range cands {
			grant.BatchId, grant.Chunk = cand.batch.Id, cand.chunk.Index
			grant.ExpiresAt = s.c.Now().Add(s.ttl()).UnixMilli()
			idx, err := s.c.Apply(ctx, grant)
			if err != nil {
				if errors.Is(err, fsm.ErrConflict) || errors.Is(err, fsm.ErrStaleToken) {
					continue
				}
				return nil, rpcError(err)
			}
			return connect.NewResponse(s.leaseResponse(m.AgentId, cand.batch.Id, cand.chunk.Index, idx)), nil
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return connect.NewResponse(&vbatchv1.LeaseResponse{}), nil
		}
		select {
		case <-ctx.Done():
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		case <-watch:
			// Every applied command wakes the poll; most are not a new
			// pending chunk, so look again at most every leasePollGap.
			select {
			case <-ctx.Done():
				return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
			case <-time.After(leasePollGap):
			}
		case <-time.After(min(remaining, time.Second)):
		}
	}
}

// resumeGrant answers a retried lease attempt whose earlier call may have
// been granted a lease while its answer was lost: after a consistent read
// (every grant committed so far is applied here) it returns that lease if
// it is live, so the agent runs it now rather than the chunk waiting out
// its TTL. A lease found on a batch being cancelled, or past its window, is
// released instead, so the cancel or the expiry need not wait for it.
// nil, nil: no such lease to give, grant anew.
func (s *agentService) resumeGrant(ctx context.Context, agentID, requestID string) (*vbatchv1.LeaseResponse, error) {
	if err := s.c.ConsistentRead(ctx); err != nil {
		return nil, rpcError(err)
	}
	var (
		batchID string
		chunk   uint32
		token   uint64
		running bool
		found   bool
	)
	s.c.fsm.View(func(st *fsm.State) {
		// Judged on the FSM's clock (the leader's, as of its latest
		// command), not this node's: it never runs ahead of the leader's,
		// so a live lease is never taken for an ended one here.
		nowMs := st.Now
		b, ch, ok := fsm.GrantedTo(st, agentID, requestID)
		if !ok || ch.Lease.ExpiresAt <= nowMs {
			return
		}
		batchID, chunk, token, found = b.Id, ch.Index, ch.Lease.Token, true
		running = b.Status == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS && !pastWindow(b, nowMs/1000)
	})
	if !found {
		return nil, nil
	}
	if running {
		s.c.log.Info("lease answer was lost; granting it again", "agent", agentID, "batch_id", batchID, "chunk", chunk, "token", token)
		s.c.metrics.LeasesResumed.Inc()
		return s.leaseResponse(agentID, batchID, chunk, token), nil
	}
	_, err := s.c.Apply(ctx, &vbatchv1.ReleaseLease{BatchId: batchID, Chunk: chunk, Token: token, Reason: fsm.ReleaseUnclaimed})
	if err != nil && !errors.Is(err, fsm.ErrStaleToken) {
		return nil, rpcError(err)
	}
	return nil, nil
}

// gossipPollGap is how often a Lease from an agent gossip does not list
// looks again.
const gossipPollGap = 20 * time.Millisecond

// waitListed waits until gossip lists agent id as an alive agent, until
// deadline or the end of ctx, and reports whether it does. A coordinator
// under that name does not count: the leader would expire the lease.
func (s *agentService) waitListed(ctx context.Context, id string, deadline time.Time) bool {
	for {
		if _, alive := s.c.pool.MemberWithRole(id, gossip.RoleAgent); alive {
			return true
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(min(remaining, gossipPollGap)):
		}
	}
}

// leasePollGap is the least time between two looks of a waiting Lease.
const leasePollGap = 25 * time.Millisecond

type candidate struct {
	batch *vbatchv1.Batch
	chunk *vbatchv1.Chunk
}

// candidates lists grantable chunks for an agent: oldest batch first, and
// within a batch a random rotation so racing agents rarely collide.
func (s *agentService) candidates(agentID string, models []string) ([]candidate, bool) {
	out, registered, needAlive := s.collectCandidates(agentID, models, nil)
	if needAlive {
		// A pending chunk's head line crashed an engine alone: whether this
		// agent may have it depends on which other agents serve the model,
		// which only gossip knows (and is not asked under the FSM lock).
		out, registered, _ = s.collectCandidates(agentID, models, s.aliveAgents())
	}
	return out, registered
}

// collectCandidates does the work of candidates. With alive nil it stops
// and reports needAlive at the first pending chunk whose grant depends on
// the agents alive (fsm.AvoidFor).
func (s *agentService) collectCandidates(agentID string, models []string, alive map[string]bool) (out []candidate, registered, needAlive bool) {
	s.c.fsm.View(func(st *fsm.State) {
		ag, ok := st.Agents[agentID]
		if !ok {
			return
		}
		registered = true
		if ag.Draining {
			return
		}
		if len(models) == 0 {
			models = ag.Models
		}
		// A batch past its window takes no more leases: the leader is
		// expiring it, from progress that must hold still. Past it on
		// this node's clock or on the FSM's (the leader's, as of its
		// latest command), whichever is later: the FSM refuses a grant
		// past the window on its own time (within_window), and each
		// refused grant would still be a committed raft entry.
		nowSec := max(s.c.Now().Unix(), st.Now/1000)
		var batches []*vbatchv1.Batch
		st.LiveBatches(func(b *vbatchv1.Batch) bool {
			if b.Status == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS && slices.Contains(models, b.Model) && !pastWindow(b, nowSec) {
				batches = append(batches, b)
			}
			return true
		})
		sort.Slice(batches, func(i, j int) bool {
			if batches[i].CreatedAt != batches[j].CreatedAt {
				return batches[i].CreatedAt < batches[j].CreatedAt
			}
			return batches[i].Id < batches[j].Id
		})
		others := map[string]bool{} // model → another live agent serves it
		for _, b := range batches {
			var pending []candidate
			for _, ch := range b.Chunks {
				if ch.State != vbatchv1.ChunkState_CHUNK_STATE_PENDING {
					continue
				}
				if ch.HeadCrashes > 0 {
					if alive == nil {
						needAlive = true
						return
					}
					o, ok := others[b.Model]
					if !ok {
						o = othersServing(st, alive, agentID, b.Model)
						others[b.Model] = o
					}
					if fsm.AvoidFor(ch, agentID, o) {
						continue
					}
				}
				pending = append(pending, candidate{batch: b, chunk: ch})
			}
			if len(pending) > 1 {
				k := rand.IntN(min(len(pending), 4))
				pending = append(pending[k:], pending[:k]...)
			}
			out = append(out, pending...)
			if len(out) >= 8 {
				break
			}
		}
		// Clone what leaves the lock.
		for i := range out {
			out[i] = candidate{batch: &vbatchv1.Batch{Id: out[i].batch.Id}, chunk: &vbatchv1.Chunk{Index: out[i].chunk.Index}}
		}
	})
	return out, registered, needAlive
}

// aliveAgents returns the agents gossip lists as alive (none without a
// gossip pool, as in the RPC fuzz tests), each true when its telemetry
// lets it take work (serving): one whose engine is down takes no leases.
func (s *agentService) aliveAgents() map[string]bool {
	alive := map[string]bool{}
	if s.c.pool == nil {
		return alive
	}
	tel := s.latestTelemetry()
	now := s.c.Now()
	for _, m := range s.c.pool.MembersWithRole(gossip.RoleAgent) {
		t, ok := tel[m.Name]
		alive[m.Name] = serving(t, ok, now)
	}
	return alive
}

// serving reports whether an agent's latest telemetry lets it take work:
// there is none fresh enough (telemetryFresh) to say otherwise, or it
// shows a loaded engine.
func serving(t AgentTelemetry, ok bool, now time.Time) bool {
	return !ok || now.Sub(t.ReceivedAt) >= telemetryFresh || engineLoaded(t.Report)
}

// engineLoaded reports whether a telemetry report shows a loaded engine;
// true without a report (none yet).
func engineLoaded(r *vbatchv1.TelemetryRequest) bool {
	if r == nil || len(r.Engines) == 0 {
		return true
	}
	for _, e := range r.Engines {
		if e.Loaded {
			return true
		}
	}
	return false
}

// othersServing reports whether an agent other than agentID, alive in
// gossip, registered and not draining, serves model.
func othersServing(st *fsm.State, alive map[string]bool, agentID, model string) bool {
	for id, a := range st.Agents {
		if id != agentID && alive[id] && !a.Draining && slices.Contains(a.Models, model) {
			return true
		}
	}
	return false
}

func (s *agentService) leaseResponse(agentID, batchID string, chunk uint32, token uint64) *vbatchv1.LeaseResponse {
	resp := &vbatchv1.LeaseResponse{Granted: true, BatchId: batchID, Chunk: chunk, Token: token}
	headCrashed := false
	s.c.fsm.View(func(st *fsm.State) {
		b := st.Batches[batchID]
		if b == nil || int(chunk) >= len(b.Chunks) {
			return
		}
		ch := b.Chunks[chunk]
		resp.Endpoint, resp.Model = b.Endpoint, b.Model
		resp.StartLine, resp.EndLine, resp.Progress = ch.StartLine, ch.EndLine, ch.Progress
		resp.IsolateUntil, resp.HeadCrashes = fsm.Isolation(ch, agentID, false)
		headCrashed = ch.HeadCrashes > 0
		if ch.Lease != nil {
			resp.ExpiresAtUnixMs = ch.Lease.ExpiresAt
		}
	})
	if headCrashed {
		// How this agent counts the head line's crashes depends on which
		// other agents serve the model (gossip, asked outside the FSM lock).
		alive := s.aliveAgents()
		s.c.fsm.View(func(st *fsm.State) {
			if b := st.Batches[batchID]; b != nil && int(chunk) < len(b.Chunks) {
				_, resp.HeadCrashes = fsm.Isolation(b.Chunks[chunk], agentID, othersServing(st, alive, agentID, b.Model))
			}
		})
	}
	return resp
}

// Renew extends a live lease and tells the agent whether to go on.
func (s *agentService) Renew(ctx context.Context, req *connect.Request[vbatchv1.RenewRequest]) (*connect.Response[vbatchv1.RenewResponse], error) {
	m := req.Msg
	// The token is the raft index that granted the lease: once this node
	// has applied it, local state knows the lease, and authorizeLease
	// cannot mistake a lease it has not seen yet for an ended one.
	if err := s.c.waitApplied(ctx, m.Token); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if err := s.authorizeLease(ctx, m.BatchId, m.Chunk, m.Token); err != nil {
		return nil, err
	}
	if s.doneUnder(m.BatchId, m.Chunk, m.Token) {
		// The lease's last part completed the chunk; the agent may not
		// have heard yet. Keep it going so its retry learns that.
		return connect.NewResponse(&vbatchv1.RenewResponse{Verdict: vbatchv1.LeaseVerdict_LEASE_VERDICT_OK}), nil
	}
	renew := &vbatchv1.RenewLease{BatchId: m.BatchId, Chunk: m.Chunk, Token: m.Token, ExpiresAt: s.c.Now().Add(s.ttl()).UnixMilli()}
	if s.c.clusterAtFSMLevel(fsm.LevelLeaseTTL) {
		renew.TtlMs = s.ttl().Milliseconds()
	}
	_, err := s.c.Apply(ctx, renew)
	switch {
	case (errors.Is(err, fsm.ErrStaleToken) || errors.Is(err, fsm.ErrConflict)) && s.doneUnder(m.BatchId, m.Chunk, m.Token):
		// The last part's CompletePart was ordered before this renewal
		// (the refusal's apply waited for it locally).
		return connect.NewResponse(&vbatchv1.RenewResponse{Verdict: vbatchv1.LeaseVerdict_LEASE_VERDICT_OK}), nil
	case errors.Is(err, fsm.ErrStaleToken), errors.Is(err, fsm.ErrConflict), errors.Is(err, fsm.ErrNotFound):
		return connect.NewResponse(&vbatchv1.RenewResponse{Verdict: vbatchv1.LeaseVerdict_LEASE_VERDICT_REVOKED}), nil
	case err != nil:
		return nil, rpcError(err)
	}
	verdict := vbatchv1.LeaseVerdict_LEASE_VERDICT_OK
	expires := renew.ExpiresAt
	s.c.fsm.View(func(st *fsm.State) {
		if b := st.Batches[m.BatchId]; b != nil && b.Status == vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING {
			verdict = vbatchv1.LeaseVerdict_LEASE_VERDICT_CANCELLED
		}
		// A draining agent commits what finished and hands the lease back.
		if b := st.Batches[m.BatchId]; b != nil && int(m.Chunk) < len(b.Chunks) {
			if l := b.Chunks[m.Chunk].Lease; l != nil && l.Token == m.Token {
				expires = l.ExpiresAt
				if ag := st.Agents[l.AgentId]; ag != nil && ag.Draining {
					verdict = vbatchv1.LeaseVerdict_LEASE_VERDICT_CANCELLED
				}
			}
		}
	})
	return connect.NewResponse(&vbatchv1.RenewResponse{Verdict: verdict, ExpiresAtUnixMs: expires}), nil
}

// ReadInput streams a leased chunk's input lines from from_line on.
func (s *agentService) ReadInput(ctx context.Context, req *connect.Request[vbatchv1.ReadInputRequest], stream *connect.ServerStream[vbatchv1.ReadInputResponse]) error {
	m := req.Msg
	// The token is the raft index that granted the lease: once this node
	// has applied it, local state knows the lease.
	if err := s.c.waitApplied(ctx, m.Token); err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	if err := s.authorizeLease(ctx, m.BatchId, m.Chunk, m.Token); err != nil {
		return err
	}
	var ch *vbatchv1.Chunk
	var input *vbatchv1.File
	var lerr error
	s.c.fsm.View(func(st *fsm.State) {
		b := st.Batches[m.BatchId]
		if b == nil || int(m.Chunk) >= len(b.Chunks) {
			lerr = connect.NewError(connect.CodeNotFound, fmt.Errorf("chunk %s/%d not found", m.BatchId, m.Chunk))
			return
		}
		c := b.Chunks[m.Chunk]
		if c.Lease == nil || c.Lease.Token != m.Token {
			lerr = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("chunk %s/%d: %w", m.BatchId, m.Chunk, fsm.ErrStaleToken))
			return
		}
		ch = proto.Clone(c).(*vbatchv1.Chunk)
		if f := st.Files[b.InputFileId]; f != nil {
			input = proto.Clone(f).(*vbatchv1.File)
		}
	})
	if lerr != nil {
		return lerr
	}
	if input == nil || len(input.Parts) != 1 {
		// Not FailedPrecondition: agents read that as a stale token and
		// drop the lease without releasing it.
		return connect.NewError(connect.CodeInternal, fmt.Errorf("batch %s: input file missing", m.BatchId))
	}
	sha := input.Parts[0].Sha256
	if err := whileKeptAlive(ctx, stream, func() error { return s.c.repl.Ensure(ctx, sha) }); err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	rc, err := s.c.blobs.OpenRange(sha, ch.StartOffset, ch.EndOffset-ch.StartOffset)
	if err != nil {
		return connect.NewError(connect.CodeInternal, err)
	}
	defer rc.Close()
	return sendInputLines(rc, ch.StartLine, ch.EndLine, m.FromLine, stream.Send)
}

// sendInputLines reads the chunk's lines [start, end) from r and sends
// those from from on, whole lines only, in messages of at most
// readBatchLines lines or about readBatchBytes. Only the chunk's last line
// may end without a newline (at the end of the file). A read that fails
// (a block that fails verification: the copy is quarantined and fetched
// again on the next read) ends the stream as Unavailable before the
// partial line, so the agent reads on from there, here or elsewhere.
func sendInputLines(r io.Reader, start, end, from int64, send func(*vbatchv1.ReadInputResponse) error) error {
	br := bufio.NewReaderSize(r, 1<<20)
	msg := &vbatchv1.ReadInputResponse{}
	size := 0
	for line := start; line < end; line++ {
		b, err := br.ReadBytes('\n')
		switch {
		case err == nil:
		case !errors.Is(err, io.EOF):
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read input line %d: %w", line, err))
		case len(b) == 0 || line != end-1:
			return connect.NewError(connect.CodeDataLoss, fmt.Errorf("read input line %d: the input ends before line %d", line, end))
		}
		if line < from {
			continue
		}
		if len(msg.Lines) == 0 {
			msg.FirstLine = line
		}
		msg.Lines = append(msg.Lines, bytes.TrimRight(b, "\r\n"))
		size += len(b)
		if len(msg.Lines) == readBatchLines || size >= readBatchBytes {
			if err := send(msg); err != nil {
				return err
			}
			msg, size = &vbatchv1.ReadInputResponse{}, 0
		}
	}
	if len(msg.Lines) > 0 {
		return send(msg)
	}
	return nil
}

// PutResults stores a part's bytes on a quorum, then commits the part with
// the lease's fencing token.
func (s *agentService) PutResults(ctx context.Context, req *connect.Request[vbatchv1.PutResultsRequest]) (*connect.Response[vbatchv1.PutResultsResponse], error) {
	m := req.Msg
	if err := s.c.waitApplied(ctx, m.Token); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if err := s.authorizeLease(ctx, m.BatchId, m.Chunk, m.Token); err != nil {
		return nil, err
	}
	// A retry of a part that already committed (its answer was lost) is
	// answered from the state, even if the lease or the batch has ended
	// since: the part is in, and nothing needs storing again.
	if out, ok := s.committedPart(m); ok {
		return connect.NewResponse(out), nil
	}
	if err := s.checkLease(m.BatchId, m.Chunk, m.Token); err != nil {
		s.c.metrics.StaleResultsRefused.Inc()
		return nil, err
	}
	part := &vbatchv1.Part{FromLine: m.FromLine, ToLine: m.ToLine, Succeeded: m.Succeeded, Failed: m.Failed, Token: m.Token}
	var err error
	if part.Output, err = s.storePart(ctx, m.Output); err != nil {
		return nil, err
	}
	if part.Errors, err = s.storePart(ctx, m.Errors); err != nil {
		return nil, err
	}
	var cmd proto.Message = &vbatchv1.CommitPart{BatchId: m.BatchId, Chunk: m.Chunk, Part: part, Usage: m.Usage}
	if m.Complete && s.c.clusterAtFSMLevel(fsm.LevelCompletePart) {
		cmd = &vbatchv1.CompletePart{Commit: cmd.(*vbatchv1.CommitPart)}
	}
	if _, err = s.c.Apply(ctx, cmd); err != nil {
		if errors.Is(err, fsm.ErrStaleToken) {
			s.c.metrics.StaleResultsRefused.Inc()
		}
		return nil, rpcError(err)
	}
	out, _ := s.committedPart(m)
	if _, ok := cmd.(*vbatchv1.CompletePart); ok && out.Completed {
		s.c.metrics.ChunksCompletedByPart.Inc()
	}
	return connect.NewResponse(out), nil
}

// committedPart reports whether m's part (same lines, same token) is
// already committed, with the answer for it: the chunk's progress, and
// whether the chunk is done under m's token.
func (s *agentService) committedPart(m *vbatchv1.PutResultsRequest) (*vbatchv1.PutResultsResponse, bool) {
	out := &vbatchv1.PutResultsResponse{}
	found := false
	s.c.fsm.View(func(st *fsm.State) {
		b := st.Batches[m.BatchId]
		if b == nil || int(m.Chunk) >= len(b.Chunks) {
			return
		}
		ch := b.Chunks[m.Chunk]
		out.Progress = ch.Progress
		out.Completed = doneUnderToken(ch, m.Token)
		for _, p := range ch.Parts {
			if p.FromLine == m.FromLine && p.ToLine == m.ToLine && p.Token == m.Token {
				found = true
				return
			}
		}
	})
	return out, found
}

// doneUnder reports whether the chunk is done under the given lease token.
func (s *agentService) doneUnder(batchID string, chunk uint32, token uint64) bool {
	done := false
	s.c.fsm.View(func(st *fsm.State) {
		if b := st.Batches[batchID]; b != nil && int(chunk) < len(b.Chunks) {
			done = doneUnderToken(b.Chunks[chunk], token)
		}
	})
	return done
}

// doneUnderToken reports whether ch is done and its finished lease had
// token: that lease's work completed it.
func doneUnderToken(ch *vbatchv1.Chunk, token uint64) bool {
	return ch.State == vbatchv1.ChunkState_CHUNK_STATE_DONE && ch.Lease.GetToken() == token
}

// checkLease refuses early, before any bytes are stored, a token that local
// state already knows is stale. The FSM checks again at commit.
func (s *agentService) checkLease(batchID string, chunk uint32, token uint64) error {
	var err error
	s.c.fsm.View(func(st *fsm.State) {
		b := st.Batches[batchID]
		if b == nil || int(chunk) >= len(b.Chunks) {
			err = connect.NewError(connect.CodeNotFound, fmt.Errorf("chunk %s/%d not found", batchID, chunk))
			return
		}
		ch := b.Chunks[chunk]
		if ch.Lease == nil || ch.Lease.Token != token || fsm.IsTerminal(b.Status) {
			err = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("chunk %s/%d token %d: %w", batchID, chunk, token, fsm.ErrStaleToken))
		}
	})
	return err
}

func (s *agentService) storePart(ctx context.Context, data []byte) (*vbatchv1.BlobRef, error) {
	if len(data) == 0 {
		return nil, nil
	}
	ref, err := s.c.blobs.Ingest(bytes.NewReader(data))
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if _, err := s.c.replicate(ctx, ref.Sha256); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return ref, nil
}

// Complete marks a fully committed chunk done.
func (s *agentService) Complete(ctx context.Context, req *connect.Request[vbatchv1.CompleteRequest]) (*connect.Response[vbatchv1.CompleteResponse], error) {
	m := req.Msg
	// As in Renew: authorizeLease needs the lease's grant applied here.
	if err := s.c.waitApplied(ctx, m.Token); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if err := s.authorizeLease(ctx, m.BatchId, m.Chunk, m.Token); err != nil {
		return nil, err
	}
	if _, err := s.c.Apply(ctx, &vbatchv1.CompleteChunk{BatchId: m.BatchId, Chunk: m.Chunk, Token: m.Token}); err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&vbatchv1.CompleteResponse{}), nil
}

// Release hands a lease back; its chunk keeps its committed progress.
func (s *agentService) Release(ctx context.Context, req *connect.Request[vbatchv1.ReleaseRequest]) (*connect.Response[vbatchv1.ReleaseResponse], error) {
	m := req.Msg
	// As in Renew: authorizeLease needs the lease's grant applied here.
	if err := s.c.waitApplied(ctx, m.Token); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if err := s.authorizeLease(ctx, m.BatchId, m.Chunk, m.Token); err != nil {
		return nil, err
	}
	cmd := releaseCommand(m, s.c.clusterAtFSMLevel(fsm.LevelCrashCounts))
	if m.Reason == fsm.ReleaseEngineCrash {
		s.c.log.Warn("engine crashed under a lease", "batch_id", m.BatchId, "chunk", m.Chunk, "started_end", m.StartedEnd, "alone", m.Alone)
	}
	_, err := s.c.Apply(ctx, cmd)
	if err != nil && !errors.Is(err, fsm.ErrStaleToken) {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&vbatchv1.ReleaseResponse{}), nil
}

// readKeepalive is how often ReadInput sends an empty message while it
// prepares the stream (fetching the input from a peer can take a while),
// so that the agent's idle timeout (30 s by default) does not take a slow
// start for a hung coordinator.
var readKeepalive = 10 * time.Second

// whileKeptAlive runs fn, sending an empty message on stream every
// readKeepalive until it returns.
func whileKeptAlive(ctx context.Context, stream *connect.ServerStream[vbatchv1.ReadInputResponse], fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	t := time.NewTicker(readKeepalive)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
			if err := stream.Send(&vbatchv1.ReadInputResponse{}); err != nil {
				// The agent went away; fn ends with ctx.
				<-done
				return fmt.Errorf("keepalive: %w", err)
			}
		case <-ctx.Done():
			<-done
			return ctx.Err()
		}
	}
}

// releaseCommand is the command for a Release: the crash fields go along
// only when every server applies them (crashCounts), so that no server
// counts a crash its peers ignore.
func releaseCommand(m *vbatchv1.ReleaseRequest, crashCounts bool) *vbatchv1.ReleaseLease {
	cmd := &vbatchv1.ReleaseLease{BatchId: m.BatchId, Chunk: m.Chunk, Token: m.Token, Reason: m.Reason}
	if m.Reason == fsm.ReleaseEngineCrash && crashCounts {
		cmd.StartedEnd, cmd.Alone = m.StartedEnd, m.Alone
	}
	return cmd
}

// Telemetry keeps the agent's latest report in memory.
func (s *agentService) Telemetry(ctx context.Context, req *connect.Request[vbatchv1.TelemetryRequest]) (*connect.Response[vbatchv1.TelemetryResponse], error) {
	if req.Msg.AgentId == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("agent id required"))
	}
	if err := s.authorizeAgent(ctx, req.Msg.AgentId); err != nil {
		return nil, err
	}
	now := s.c.Now()
	s.store(req.Msg, now)
	s.c.shareTelemetry(req.Msg, now)
	return connect.NewResponse(&vbatchv1.TelemetryResponse{}), nil
}

// store keeps r as the agent's latest report unless a later one is held,
// and counts r's XID events the first time this coordinator sees r (sent
// after the report it holds), whether from the agent or from a peer, so
// the XID counter reads the same on every coordinator.
func (s *agentService) store(r *vbatchv1.TelemetryRequest, receivedAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.telemetry[r.AgentId]
	// Reports are ordered by the agent's clock. A report held for a while
	// gives way to any new one, so an agent whose clock stepped back (a
	// bad RTC corrected by NTP after boot, a restart) is not ignored until
	// real time catches up with its old reports.
	if ok && receivedAt.Sub(old.ReceivedAt) > telemetryStale {
		ok = false
	}
	if ok && old.Report.SentAtUnixMs > r.SentAtUnixMs {
		return
	}
	if !ok || old.Report.SentAtUnixMs < r.SentAtUnixMs {
		s.c.metrics.ObserveXIDs(r.AgentId, len(r.XidEvents))
	}
	s.telemetry[r.AgentId] = &AgentTelemetry{Report: r, ReceivedAt: receivedAt}
}

// telemetryStale is how long a held report orders the ones after it;
// agents report every few seconds.
const telemetryStale = 30 * time.Second

// latestTelemetry returns a copy of the telemetry map.
func (s *agentService) latestTelemetry() map[string]AgentTelemetry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]AgentTelemetry, len(s.telemetry))
	for k, v := range s.telemetry {
		out[k] = *v
	}
	return out
}

// rpcError maps Apply errors to connect codes agents branch on.
func rpcError(err error) error {
	switch {
	case errors.Is(err, fsm.ErrStaleToken):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, fsm.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, fsm.ErrConflict):
		return connect.NewError(connect.CodeAborted, err)
	case errors.Is(err, fsm.ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	default:
		return connect.NewError(connect.CodeUnavailable, err)
	}
}
