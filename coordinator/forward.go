package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/tlsutil"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// ErrNoLeader means the cluster has no reachable leader right now; the
// request may be retried (the API answers 503).
var ErrNoLeader = fmt.Errorf("no raft leader: %w", api.ErrUnavailable)

// applyRetryMax caps the wait between two attempts of a forwarded write.
const applyRetryMax = 100 * time.Millisecond

// applyTimeout bounds one raft Apply on the leader.
const applyTimeout = 10 * time.Second

// Apply proposes cmd through the leader and waits until this node has
// applied it, so a client reading from this node sees its own write. A
// follower forwards to the leader over connect RPC; across a failover it
// retries until ctx ends (commands carry proposer-made ids, so a retry of a
// write that did commit is an idempotent no-op).
func (c *Coordinator) Apply(ctx context.Context, cmd proto.Message) (uint64, error) {
	return c.applyWith(ctx, cmd, c.applyOnce)
}

// applyWith encodes cmd and makes attempts with once until one succeeds,
// fails for good (not retryable, or errNotLeading), or ctx ends (15 s when
// it has no deadline); then waits until this node has applied it.
func (c *Coordinator) applyWith(ctx context.Context, cmd proto.Message, once func(context.Context, []byte) (*vbatchv1.Result, error)) (uint64, error) {
	data, err := fsm.Encode(cmd, c.Now())
	if err != nil {
		return 0, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
	}
	// Retries stay frequent: while there is no leader a retry costs a
	// local check, and a long back-off would outlast the election (one
	// doubling to 500 ms cost about 0.6 s of every failover).
	backoff := 10 * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			// A caller that gave up (a cancelled leader tick, a client
			// gone) proposes nothing more.
			return 0, fmt.Errorf("%w: %v", ErrNoLeader, err)
		}
		res, err := once(ctx, data)
		if err == nil {
			if werr := c.waitApplied(ctx, res.Index); werr != nil {
				return res.Index, werr
			}
			return res.Index, fsm.FromResult(res)
		}
		if errors.Is(err, errNotLeading) || !retryable(err) {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", ErrNoLeader, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, applyRetryMax)
	}
}

// errNotLeading refuses a leader's decision on a node that no longer leads.
var errNotLeading = errors.New("this node no longer leads")

// applyAsLeader proposes cmd, a decision the leader loop or its chores
// made from this node's state, on this node only: it never forwards, and
// it gives up once this node does not lead. Forwarded to a new leader, an
// old leader's decision would be applied after the new leader's barrier,
// to a state it was not made from (a batch expired with no lines just
// after a StartBatch racing it, a lease expired just after the new leader
// extended it). Instead, either the entry made it into the log before
// leadership changed, and the new leader's barrier covers it before that
// leader decides anything, or it is lost and the new leader decides anew.
func (c *Coordinator) applyAsLeader(ctx context.Context, cmd proto.Message) (uint64, error) {
	return c.applyWith(ctx, cmd, func(ctx context.Context, data []byte) (*vbatchv1.Result, error) {
		return c.applyHere(ctx, data, gateFailFast)
	})
}

// applyHere applies on this node while it leads; it never forwards.
func (c *Coordinator) applyHere(ctx context.Context, data []byte, mode gateMode) (*vbatchv1.Result, error) {
	if c.raftNode.raft.State() != raft.Leader {
		return nil, errNotLeading
	}
	res, err := c.applyLocalGated(ctx, data, mode)
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return nil, fmt.Errorf("%w: %w", errNotLeading, err)
	}
	return res, err
}

// applyOnce applies on this node if it leads, else forwards once.
func (c *Coordinator) applyOnce(ctx context.Context, data []byte) (*vbatchv1.Result, error) {
	r := c.raftNode.raft
	if r.State() == raft.Leader {
		return c.applyLocal(ctx, data)
	}
	_, leaderID := r.LeaderWithID()
	if leaderID == "" {
		return nil, ErrNoLeader
	}
	addr, ok := c.rpcAddrOf(string(leaderID))
	if !ok {
		return nil, fmt.Errorf("%w: leader %s has no known RPC address", ErrNoLeader, leaderID)
	}
	resp, err := c.clusterClient(addr).Apply(ctx, connect.NewRequest(&vbatchv1.ApplyRequest{Envelope: data}))
	if err != nil {
		return nil, fmt.Errorf("forward to leader %s: %w", leaderID, err)
	}
	return resp.Msg.Result, nil
}

// gateMode says how a command meets the leader clock's gate.
type gateMode int

const (
	// gateWait waits (up to gateWaitMax) for the leases to be extended.
	gateWait gateMode = iota
	// gateFailFast answers at once: the leader loop's own decisions,
	// which must not wait on the loop that opens the gate.
	gateFailFast
	// gateNone passes: the ExtendLeases that opens the gate.
	gateNone
)

// applyLocal stamps the leader's time and applies through raft, once the
// leases of this term are extended (leaderclock.go).
func (c *Coordinator) applyLocal(ctx context.Context, data []byte) (*vbatchv1.Result, error) {
	return c.applyLocalGated(ctx, data, gateWait)
}

// applyLocalGated is applyLocal with the gate's mode given.
func (c *Coordinator) applyLocalGated(ctx context.Context, data []byte, mode gateMode) (*vbatchv1.Result, error) {
	now := c.Now()
	if mode != gateNone && c.raftNode.raft.State() == raft.Leader {
		var err error
		now, err = c.clock.admit(ctx.Done(), c.raftNode.raft.CurrentTerm, c.Now, mode == gateWait)
		if err != nil {
			if mode == gateFailFast {
				return nil, fmt.Errorf("%w: %w", errNotLeading, err)
			}
			return nil, fmt.Errorf("%w: %w", errRaftApply, err)
		}
	}
	stamped, err := fsm.Stamp(data, now)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	f := c.raftNode.raft.Apply(stamped, applyTimeout)
	if err := c.raftNode.await(f); err != nil {
		// Whatever raft says (leadership lost, a log store that cannot
		// write, a full disk), the command may commit on another leader:
		// retrying is safe because every command is idempotent.
		return nil, fmt.Errorf("%w: %w", errRaftApply, err)
	}
	c.metrics.ObserveApply(time.Since(start))
	c.notices.applied(c.raftNode.raft.LastIndex())
	res, ok := f.Response().(*vbatchv1.Result)
	if !ok {
		return nil, fmt.Errorf("raft apply: unexpected response %T", f.Response())
	}
	return res, nil
}

// errRaftApply marks a failure of raft itself to commit a command on this
// node (as opposed to the FSM refusing it, which is a Result).
var errRaftApply = errors.New("raft apply")

// consistentReadTimeout bounds a consistent read whose caller set no
// deadline: a node that cannot catch up answers 503 rather than hang.
const consistentReadTimeout = 5 * time.Second

// retryable reports whether an apply failure may succeed on a retry: no
// leader, leadership lost mid-apply, raft failing on the leader, or the
// leader unreachable.
func retryable(err error) bool {
	if errors.Is(err, ErrNoLeader) || errors.Is(err, errRaftApply) || errors.Is(err, raft.ErrNotLeader) ||
		errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrAbortedByRestore) {
		return true
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeUnavailable, connect.CodeFailedPrecondition, connect.CodeAborted:
			return true
		}
	}
	return false
}

// waitApplied blocks until this node's FSM has applied index.
func (c *Coordinator) waitApplied(ctx context.Context, index uint64) error {
	for {
		watch := c.fsm.Watch()
		if c.fsm.AppliedIndex() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d: %w", index, ctx.Err())
		case <-watch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ConsistentRead verifies leadership (on the leader, or by asking it) and
// waits until this node has applied everything the leader had committed.
func (c *Coordinator) ConsistentRead(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, consistentReadTimeout)
		defer cancel()
	}
	for {
		idx, err := c.leaderIndex(ctx)
		if err == nil {
			return c.waitApplied(ctx, idx)
		}
		if !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readIndex returns, on the leader, the index a consistent read waits for:
// the last command at or before the commit index (see lastCommand). Every
// write acknowledged so far is at or before it.
func (c *Coordinator) readIndex() (uint64, error) {
	commit := c.raftNode.raft.CommitIndex()
	idx, ok, err := lastCommand(c.raftNode.logs, commit)
	if err != nil {
		return 0, err
	}
	if !ok {
		// No command in the log up to commit: every command is older than
		// the log's first entry, and this leader applied them long ago.
		idx = min(commit, c.fsm.AppliedIndex())
	}
	return idx, nil
}

// verifyLeader confirms with a quorum that r still leads, until ctx ends.
// raft may never answer a verification it had in flight when it shut down
// (the node is closing): the wait must not outlive ctx, or the loop that
// asked would hold up the node's close for ever.
func verifyLeader(ctx context.Context, r *raft.Raft) error {
	f := r.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("verify leader: %w", ctx.Err())
	}
}

func (c *Coordinator) leaderIndex(ctx context.Context) (uint64, error) {
	r := c.raftNode.raft
	if r.State() == raft.Leader {
		if err := c.readReady(); err != nil {
			return 0, fmt.Errorf("%w: %w", errRaftApply, err)
		}
		idx, err := c.readIndex()
		if err != nil {
			return 0, fmt.Errorf("%w: %w", errRaftApply, err)
		}
		if err := verifyLeader(ctx, r); err != nil {
			return 0, fmt.Errorf("verify leader: %w", err)
		}
		return idx, nil
	}
	_, leaderID := r.LeaderWithID()
	if leaderID == "" {
		return 0, ErrNoLeader
	}
	addr, ok := c.rpcAddrOf(string(leaderID))
	if !ok {
		return 0, ErrNoLeader
	}
	resp, err := c.clusterClient(addr).VerifyLeader(ctx, connect.NewRequest(&vbatchv1.VerifyLeaderRequest{}))
	if err != nil {
		return 0, fmt.Errorf("verify leader %s: %w", leaderID, err)
	}
	return resp.Msg.Index, nil
}

// clusterClient returns a (cached) ClusterService client for an RPC address.
func (c *Coordinator) clusterClient(addr string) vbatchv1connect.ClusterServiceClient {
	c.clientsMu.Lock()
	defer c.clientsMu.Unlock()
	if cl, ok := c.clusterClients[addr]; ok {
		return cl
	}
	cl := vbatchv1connect.NewClusterServiceClient(c.httpClient, c.scheme()+"://"+addr, connect.WithAcceptCompression("gzip", nil, nil))
	c.clusterClients[addr] = cl
	return cl
}

// clusterService is the connect handler of ClusterService.
type clusterService struct{ c *Coordinator }

var _ vbatchv1connect.ClusterServiceHandler = (*clusterService)(nil)

// Apply commits a forwarded command if this node leads.
func (s *clusterService) Apply(ctx context.Context, req *connect.Request[vbatchv1.ApplyRequest]) (*connect.Response[vbatchv1.ApplyResponse], error) {
	if s.c.raftNode.raft.State() != raft.Leader {
		return nil, connect.NewError(connect.CodeFailedPrecondition, raft.ErrNotLeader)
	}
	if _, _, err := fsm.Decode(req.Msg.Envelope); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	res, err := s.c.applyLocal(ctx, req.Msg.Envelope)
	if err != nil {
		if retryable(err) {
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return connect.NewResponse(&vbatchv1.ApplyResponse{Result: res}), nil
}

// Status reports this node's raft view.
func (s *clusterService) Status(ctx context.Context, _ *connect.Request[vbatchv1.StatusRequest]) (*connect.Response[vbatchv1.StatusResponse], error) {
	return connect.NewResponse(s.c.localStatus()), nil
}

// AutopilotHealth reports the leader's autopilot state.
func (s *clusterService) AutopilotHealth(ctx context.Context, _ *connect.Request[vbatchv1.AutopilotHealthRequest]) (*connect.Response[vbatchv1.AutopilotHealthResponse], error) {
	if s.c.raftNode.raft.State() != raft.Leader {
		return nil, connect.NewError(connect.CodeFailedPrecondition, raft.ErrNotLeader)
	}
	h := s.c.autopilotHealth()
	if h == nil {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("autopilot has no state yet"))
	}
	return connect.NewResponse(h), nil
}

// VerifyLeader confirms leadership and returns the commit index.
func (s *clusterService) VerifyLeader(ctx context.Context, _ *connect.Request[vbatchv1.VerifyLeaderRequest]) (*connect.Response[vbatchv1.VerifyLeaderResponse], error) {
	r := s.c.raftNode.raft
	if r.State() != raft.Leader {
		return nil, connect.NewError(connect.CodeFailedPrecondition, raft.ErrNotLeader)
	}
	if err := s.c.readReady(); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	idx, err := s.c.readIndex()
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if err := verifyLeader(ctx, r); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewResponse(&vbatchv1.VerifyLeaderResponse{Index: idx}), nil
}

func (c *Coordinator) localStatus() *vbatchv1.StatusResponse {
	r := c.raftNode.raft
	_, leader := r.LeaderWithID()
	term, _ := strconv.ParseUint(r.Stats()["term"], 10, 64)
	servers, complete, committed := c.statusServers()
	return &vbatchv1.StatusResponse{
		NodeId:        c.cfg.NodeID,
		State:         r.State().String(),
		Term:          term,
		LastIndex:     r.LastIndex(),
		AppliedIndex:  r.AppliedIndex(),
		CommitIndex:   r.CommitIndex(),
		LeaderId:      string(leader),
		HttpAddr:      c.httpAdvertise,
		RaftAddr:      c.raftNode.advertise,
		RpcAddr:       c.rpcAdvertise,
		LastContactMs: lastContactMs(r),
		LogWriteMs:    c.logWriteMs(),
		UnixMs:        c.Now().UnixMilli(),
		Incarnation:   c.raftNode.incarnation,
		LostState:     c.lostState.Load(),
		Servers:       servers,

		IncarnationsComplete:   complete,
		ConfigurationCommitted: committed,
	}
}

// newHTTPClient is the client for RPC and blob transfer among nodes. With
// TLS it presents this node's certificate and accepts only peers holding a
// server certificate of the cluster.
func newHTTPClient(store *tlsutil.Store) *http.Client {
	return &http.Client{Transport: peerTransport(store, tlsutil.RoleServer)}
}

// newAgentTransport is the transport to agents' online endpoints: with TLS
// the agent must hold an agent certificate of the cluster, and this node
// shows its server certificate, which is what the agent asks for.
func newAgentTransport(store *tlsutil.Store) http.RoundTripper {
	return peerTransport(store, tlsutil.RoleAgent)
}

// peerTransport dials peers of role: with TLS, over mutual TLS that
// accepts only that role's certificates.
func peerTransport(store *tlsutil.Store, role string) *http.Transport {
	tr := &http.Transport{
		// Peers share a LAN: a connection that takes seconds to open is to
		// a node that is gone, and the caller should move on.
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
	}
	if store != nil {
		tr.TLSClientConfig = store.ClientConfig(role)
		tr.ForceAttemptHTTP2 = true
	}
	return tr
}

// readReady returns once this leader has committed an entry of its own
// term (once per term): until then its commit index may miss entries the
// previous leader committed and acknowledged (Raft §8). The entry is an
// empty FSM command, not a raft barrier: consistent reads wait for the
// FSM's applied index, which entries the FSM never sees do not move.
func (c *Coordinator) readReady() error {
	term := c.raftNode.raft.CurrentTerm()
	if c.readyTerm.Load() == term {
		return nil
	}
	if _, err := c.commitBarrier("first read of the term"); err != nil {
		return err
	}
	c.readyTerm.Store(term)
	return nil
}
