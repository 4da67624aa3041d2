package coordinator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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
}

func newRouter(c *Coordinator) *router {
	return &router{c: c, inflight: map[string]*atomic.Int64{}}
}

// Models lists the models live agents serve, sorted by id. A model's
// created time is the last registration of the earliest registered live
// agent serving it, read from the replicated state.
func (r *router) Models() []api.Model {
	created := map[string]int64{}
	live := r.c.pool.MembersWithRole(gossip.RoleAgent)
	r.c.fsm.View(func(st *fsm.State) {
		for _, m := range live {
			at := int64(0)
			if ag := st.Agents[m.Name]; ag != nil {
				at = ag.RegisteredAt
			}
			for _, model := range m.Meta.Models {
				if old, ok := created[model]; !ok || (at > 0 && (old == 0 || at < old)) {
					created[model] = at
				}
			}
		}
	})
	out := make([]api.Model, 0, len(created))
	for id, at := range created {
		out = append(out, api.Model{ID: id, Created: at})
	}
	slices.SortFunc(out, func(a, b api.Model) int { return strings.Compare(a.ID, b.ID) })
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

// pick returns the least-loaded live agent serving model.
func (r *router) pick(model string) (gossip.Member, error) {
	tel := r.c.agents.latestTelemetry()
	var best gossip.Member
	bestLoad := int64(-1)
	for _, m := range r.c.pool.MembersWithRole(gossip.RoleAgent) {
		if !slices.Contains(m.Meta.Models, model) || m.Meta.RPCAddr == "" {
			continue
		}
		load := r.counter(m.Name).Load()
		if t, ok := tel[m.Name]; ok {
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
// arrives. It returns api.ErrNoAgent (wrapped) before writing anything when no
// agent serves the model, and an error for a body it cannot read.
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
		return fmt.Errorf("invalid JSON body: %w", err)
	}
	if head.Model == "" {
		return errors.New("model is required")
	}
	agent, err := r.pick(head.Model)
	if err != nil {
		return err
	}
	n := r.counter(agent.Name)
	n.Add(1)
	defer n.Add(-1)
	target := &url.URL{Scheme: r.c.scheme(), Host: agent.Meta.RPCAddr}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del("Authorization")
			pr.Out.ContentLength = int64(len(body))
			pr.Out.Body = io.NopCloser(bytes.NewReader(body))
		},
		FlushInterval: -1,
		Transport:     r.c.agentTransport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			r.c.log.Warn("online inference proxy failed", "agent", agent.Name, "err", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = fmt.Fprintf(w, `{"error":{"message":%q,"type":"server_error","param":null,"code":"agent_unreachable"}}`, "agent "+agent.Name+" did not answer")
		},
	}
	proxy.ServeHTTP(w, req)
	return nil
}
