package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
)

// maxOnlineBody caps an online inference request body; the API applies
// the same bound first.
const maxOnlineBody = api.MaxInferenceBodyBytes

// router sends online inference requests to the least-loaded live agent
// that serves the requested model. Load is the requests this coordinator
// has in flight to each agent plus what the agent last reported running.
type router struct {
	c        *Coordinator
	mu       sync.Mutex
	inflight map[string]*atomic.Int64
	bodies   atomic.Int64 // bytes of the online request bodies held now
	// scopes holds, per agent, the context its online requests in flight
	// run under, cancelled once gossip declares the agent gone (agentGone).
	scopes map[string]*agentScope
	// goneGrace is agentGoneGrace; tests shorten it.
	goneGrace time.Duration
}

// agentScope is the context one agent's online requests run under.
type agentScope struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// agentGoneGrace is how long after gossip declares an agent gone its
// online requests in flight are cut. An agent that drains or shuts down
// leaves gossip first and then gives its open requests 5 s to end; one
// that froze (its process stopped, its host up) is declared dead and
// would otherwise hold them until their clients give up, since the proxy
// has no response timeout (a generation may take minutes).
const agentGoneGrace = 10 * time.Second

// errAgentNotServing marks a retry after an agent answered that its engine
// did not take the request (a marked 503: engine down, or busy with a line
// run alone).
var errAgentNotServing = errors.New("the agent's engine did not take the request")

// errAgentGone is the cause of a request cut because its agent is gone.
var errAgentGone = errors.New("gossip declared the agent gone")

func newRouter(c *Coordinator) *router {
	return &router{c: c, inflight: map[string]*atomic.Int64{}, scopes: map[string]*agentScope{}, goneGrace: agentGoneGrace}
}

// scope returns the context agent's online requests run under now.
func (r *router) scope(agent string) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.scopes[agent]
	if !ok {
		ctx, cancel := context.WithCancelCause(context.Background())
		s = &agentScope{ctx: ctx, cancel: cancel}
		r.scopes[agent] = s
	}
	return s.ctx
}

// agentGone cuts, goneGrace from now, the online requests in flight to an
// agent gossip declared gone, unless the agent is back by then (a stopped
// process resumed: its requests may still be answered). Requests sent from
// now on get a new scope.
func (r *router) agentGone(agent string) {
	r.mu.Lock()
	s, ok := r.scopes[agent]
	delete(r.scopes, agent)
	r.mu.Unlock()
	if !ok {
		return
	}
	time.AfterFunc(r.goneGrace, func() {
		if _, back := r.c.pool.Member(agent); back {
			// A flap: its requests go on, and stay within reach of the
			// agent's next leave, under the current scope or chained to it.
			r.mu.Lock()
			cur, ok := r.scopes[agent]
			if !ok {
				r.scopes[agent] = s
			}
			r.mu.Unlock()
			if ok {
				context.AfterFunc(cur.ctx, func() { s.cancel(context.Cause(cur.ctx)) })
			}
			return
		}
		s.cancel(errAgentGone)
	})
}

// Models lists the models live registered agents serve, sorted by id: the
// models routeable by pick, draining agents' included. A model's created
// time is the last registration of the earliest registered live agent
// serving it.
func (r *router) Models() []api.Model {
	created := map[string]int64{}
	for _, a := range r.liveAgents() {
		for _, model := range a.member.Meta.Models {
			if old, ok := created[model]; !ok || (a.registeredAt > 0 && (old == 0 || a.registeredAt < old)) {
				created[model] = a.registeredAt
			}
		}
	}
	out := make([]api.Model, 0, len(created))
	for id, at := range created {
		out = append(out, api.Model{ID: id, Created: at})
	}
	slices.SortFunc(out, func(a, b api.Model) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// liveAgent is an agent online requests may go to, as liveAgents finds it.
type liveAgent struct {
	// member is the agent's gossip member, its Meta.Models cut down to the
	// models it registered and its Meta.RPCAddr the registered address,
	// when the registration has one.
	member       gossip.Member
	registeredAt int64
	draining     bool
}

// liveAgents lists the agents that are both alive in gossip and registered
// in the replicated state. Registration needs an agent certificate when TLS
// is on, while the gossip key alone lets anyone announce an agent: gossip
// says which registered agents are alive, never which agents exist, what
// they serve or where.
func (r *router) liveAgents() []liveAgent {
	members := r.c.pool.MembersWithRole(gossip.RoleAgent)
	out := make([]liveAgent, 0, len(members))
	r.c.fsm.View(func(st *fsm.State) {
		for _, m := range members {
			ag := st.Agents[m.Name]
			if ag == nil {
				continue
			}
			// The registration (checked against the agent's certificate)
			// lists every model; gossip's announcement may leave some out
			// to fit its size limit.
			m.Meta.Models = slices.Clone(ag.Models)
			if ag.RpcAddr != "" {
				m.Meta.RPCAddr = ag.RpcAddr
			}
			out = append(out, liveAgent{member: m, registeredAt: ag.RegisteredAt, draining: ag.Draining})
		}
	})
	return out
}

func (r *router) counter(agent string) *atomic.Int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.inflight[agent]
	if !ok {
		n = &atomic.Int64{}
		r.inflight[agent] = n
	}
	return n
}

// Online routing bounds.
const (
	// onlineAttempts is how many agents one online request may be tried
	// on: another is tried only when no engine got the request (and so
	// nothing was sent to the client either).
	onlineAttempts = 3
	// onlineBodyBudget bounds the online request bodies this coordinator
	// holds at once (each is kept for its request's life, to retry it).
	onlineBodyBudget = 1 << 30
	// telemetryFresh is how old an agent's report may be and still steer
	// routing; an older one says nothing of its load now.
	telemetryFresh = time.Minute
)

// errRetryAgent makes the proxy leave a failed agent for the next one.
var errRetryAgent = errors.New("agent could not serve the request")

// pick returns the least-loaded live agent serving model, other than those
// in skip: registered, alive in gossip, not draining, and not reporting its
// engine down.
func (r *router) pick(model string, skip map[string]bool) (gossip.Member, error) {
	tel := r.c.agents.latestTelemetry()
	now := r.c.Now()
	var best gossip.Member
	bestLoad := int64(-1)
	for _, a := range r.liveAgents() {
		m := a.member
		if skip[m.Name] || a.draining || !slices.Contains(m.Meta.Models, model) || m.Meta.RPCAddr == "" {
			continue
		}
		t, ok := tel[m.Name]
		if !serving(t, ok, now) {
			continue
		}
		load := r.counter(m.Name).Load()
		if ok && now.Sub(t.ReceivedAt) < telemetryFresh {
			for _, e := range t.Report.GetEngines() {
				load += e.RequestsRunning + e.RequestsWaiting
			}
		}
		if bestLoad < 0 || load < bestLoad || (load == bestLoad && m.Name < best.Name) {
			best, bestLoad = m, load
		}
	}
	if bestLoad < 0 {
		return gossip.Member{}, fmt.Errorf("model %q: %w", model, api.ErrNoAgent)
	}
	return best, nil
}

// ServeInference proxies one online request, streaming SSE through as it
// arrives. It returns api.ErrNoAgent (wrapped) before writing anything when
// no agent serves the model, api.ErrInvalidJSON or another error for a body
// it cannot use, and api.ErrOverloaded when it holds too many bodies. An
// agent that could not be sent the request, or answers that its engine
// never got it (503 marked agentNotSentHeader: the engine is down), is
// left for the next best one, up to onlineAttempts; a request that may
// have reached an engine is never sent to another (see forward).
func (r *router) ServeInference(w http.ResponseWriter, req *http.Request) error {
	body, err := io.ReadAll(io.LimitReader(req.Body, maxOnlineBody+1))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxOnlineBody {
		return fmt.Errorf("body larger than %d bytes", maxOnlineBody)
	}
	var head struct {
		Model string `json:"model"`
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return fmt.Errorf("%w: %v", api.ErrInvalidJSON, err)
	}
	if head.Model == "" {
		return errors.New("model is required")
	}
	if r.bodies.Add(int64(len(body))) > onlineBodyBudget && len(body) > 0 {
		r.bodies.Add(-int64(len(body)))
		return api.ErrOverloaded
	}
	defer r.bodies.Add(-int64(len(body)))
	tried := map[string]bool{}
	var last error
	busy := true // every agent tried answered that its engine did not take it
	for attempt := 1; attempt <= onlineAttempts; attempt++ {
		agent, err := r.pick(head.Model, tried)
		if err != nil {
			if last == nil {
				return err // no agent serves the model at all
			}
			break
		}
		tried[agent.Name] = true
		last = r.forward(w, req, body, agent, attempt < onlineAttempts)
		if !errors.Is(last, errRetryAgent) {
			return nil // answered, or the error was written
		}
		busy = busy && errors.Is(last, errAgentNotServing)
		r.c.log.Info("online request: trying another agent", "agent", agent.Name, "err", last)
	}
	if busy {
		// Reachable agents whose engines are down or held by a line run
		// alone: the model is unavailable for now, as with no agent.
		w.Header().Set("Retry-After", "1")
		writeOnlineError(w, http.StatusServiceUnavailable, "model_unavailable",
			fmt.Sprintf("No agent serving %s can take the request now (%d tried: engine not serving, or busy with a request run alone); retry shortly.", head.Model, len(tried)))
		return nil
	}
	writeOnlineError(w, http.StatusBadGateway, "agent_unreachable",
		fmt.Sprintf("No agent serving %s could take the request (%d tried).", head.Model, len(tried)))
	return nil
}

// writeOnlineError answers an online request with an OpenAI error object
// of type server_error.
func writeOnlineError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"error":{"message":%q,"type":"server_error","param":null,"code":%q}}`, msg, code)
}

// forward proxies the request to one agent. With retry set, a failure
// after which the request surely never reached an engine writes nothing
// and returns errRetryAgent: the agent could not be sent the request (no
// byte of it was written to the agent), or it answered 503 marked
// agentNotSentHeader. Any other failure is answered here: a 502, a 504 or
// a connection the agent dropped may have run the request on its engine,
// and running it on another would cost a second generation, or a second
// engine for a request that crashes them.
func (r *router) forward(w http.ResponseWriter, req *http.Request, body []byte, agent gossip.Member, retry bool) error {
	n := r.counter(agent.Name)
	n.Add(1)
	defer n.Add(-1)
	// The request ends with its client, or once its agent is gone.
	client := req.Context()
	ctx, cancel := context.WithCancelCause(client)
	defer cancel(nil)
	stop := context.AfterFunc(r.scope(agent.Name), func() { cancel(errAgentGone) })
	defer stop()
	if _, ok := r.c.pool.Member(agent.Name); !ok {
		// It left between pick and scope: its leave may have passed this
		// scope by, so nothing would cut the request were it to hang.
		if retry {
			return fmt.Errorf("%w: agent %s left the gossip pool", errRetryAgent, agent.Name)
		}
		writeOnlineError(w, http.StatusBadGateway, "agent_gone", "agent "+agent.Name+" left the cluster before the request was sent")
		return nil
	}
	req = req.WithContext(ctx)
	var failed error
	var wrote atomic.Bool // request headers reached the agent's connection
	target := &url.URL{Scheme: r.c.scheme(), Host: agent.Meta.RPCAddr}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del("Authorization")
			// With either header net/http takes a POST for replayable and
			// sends it again, to the same agent, when a reused connection
			// drops after taking it: the engine would run it twice.
			pr.Out.Header.Del("Idempotency-Key")
			pr.Out.Header.Del("X-Idempotency-Key")
			pr.Out.ContentLength = int64(len(body))
			pr.Out.Body = io.NopCloser(bytes.NewReader(body))
			pr.Out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
			pr.Out = pr.Out.WithContext(httptrace.WithClientTrace(pr.Out.Context(), &httptrace.ClientTrace{
				WroteHeaders: func() { wrote.Store(true) },
			}))
		},
		ModifyResponse: func(resp *http.Response) error {
			notSent := resp.Header.Get(agentNotSentHeader) == "1"
			resp.Header.Del(agentNotSentHeader)
			if retry && resp.StatusCode == http.StatusServiceUnavailable && notSent {
				return fmt.Errorf("%w: %w: agent answered %d", errRetryAgent, errAgentNotServing, resp.StatusCode)
			}
			return nil
		},
		FlushInterval: -1,
		Transport:     r.c.agentTransport,
		ErrorHandler: func(w http.ResponseWriter, pr *http.Request, err error) {
			if client.Err() != nil {
				r.c.log.Debug("online request ended by the client", "agent", agent.Name, "err", err)
				return
			}
			if retry && errors.Is(err, errRetryAgent) {
				failed = err
				return
			}
			if retry && !wrote.Load() {
				failed = fmt.Errorf("%w: %v", errRetryAgent, err)
				return
			}
			r.c.log.Warn("online inference proxy failed", "agent", agent.Name, "err", err)
			status, code := http.StatusBadGateway, "agent_unreachable"
			switch {
			case errors.Is(context.Cause(ctx), errAgentGone):
				code = "agent_gone"
			case errors.Is(err, context.DeadlineExceeded):
				status, code = http.StatusGatewayTimeout, "agent_timeout"
			}
			writeOnlineError(w, status, code, "agent "+agent.Name+" did not answer")
		},
	}
	proxy.ServeHTTP(w, req)
	return failed
}

// agentNotSentHeader is agent.NotSentHeader: it marks an agent's 503 for
// an online request its engine never got, the one answer after which the
// request may go to another agent.
const agentNotSentHeader = "X-Vbatch-Not-Sent"
