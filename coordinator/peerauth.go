package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/monitoring"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// setupTLS loads the coordinator's certificates when TLS is configured.
func (c *Coordinator) setupTLS() error {
	if !c.cfg.TLS.Enabled() {
		return nil
	}
	s, err := tlsutil.Load(c.cfg.TLS, c.cfg.ClusterName, tlsutil.RoleServer)
	if err != nil {
		return err
	}
	c.tls = s
	return nil
}

// ReloadTLS reads the certificate, key and CA files again (on SIGHUP).
// New connections use them; on error the current ones stay in use.
func (c *Coordinator) ReloadTLS() error {
	if c.tls == nil {
		return errors.New("TLS is not configured")
	}
	if err := c.tls.Reload(); err != nil {
		return fmt.Errorf("reload TLS: %w", err)
	}
	c.log.Info("TLS certificates reloaded", "expires", c.tls.Expires())
	return nil
}

// scheme is the URL scheme of peers' RPC and agents' HTTP servers.
func (c *Coordinator) scheme() string {
	if c.tls != nil {
		return "https"
	}
	return "http"
}

type peerKey struct{}

// peerIdentity is the verified certificate identity of the RPC caller.
func peerIdentity(ctx context.Context) (tlsutil.Identity, bool) {
	id, ok := ctx.Value(peerKey{}).(tlsutil.Identity)
	return id, ok
}

// rpcAuth admits, when TLS is on, only callers whose certificate fits the
// service: agents may call AgentService, coordinators everything else
// (forwarding, status, telemetry sharing, blob transfer). The handshake
// already required a certificate from the cluster's CA.
func (c *Coordinator) rpcAuth(next http.Handler) http.Handler {
	if c.tls == nil {
		return next
	}
	agentPrefix := "/" + vbatchv1connect.AgentServiceName + "/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := c.tls.PeerIdentity(r.TLS)
		want := tlsutil.RoleServer
		if strings.HasPrefix(r.URL.Path, agentPrefix) {
			want = tlsutil.RoleAgent
		}
		if !ok || id.Role != want {
			c.log.Warn("rpc refused: wrong certificate role", "path", r.URL.Path, "role", id.Role, "node", id.Node, "remote", r.RemoteAddr)
			http.Error(w, fmt.Sprintf("this endpoint needs a %s certificate", want), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, id)))
	})
}

// authorizeAgent checks, when TLS is on, that the caller's certificate
// names agentID: an agent's identity comes from its certificate, never
// from what it claims.
func (s *agentService) authorizeAgent(ctx context.Context, agentID string) error {
	if s.c.tls == nil {
		return nil
	}
	id, ok := peerIdentity(ctx)
	if !ok || id.Role != tlsutil.RoleAgent || id.Node == "" || id.Node != agentID {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("certificate of agent %q may not act as agent %q", id.Node, agentID))
	}
	return nil
}

// authorizeLease checks, when TLS is on, that the chunk's lease with token
// is held by the calling agent, so no agent can act on another's lease even
// if it learned the token. A token that is not the chunk's current one is
// left to the fencing checks, which refuse it as stale.
func (s *agentService) authorizeLease(ctx context.Context, batchID string, chunk uint32, token uint64) error {
	if s.c.tls == nil {
		return nil
	}
	var holder string
	s.c.fsm.View(func(st *fsm.State) {
		if b := st.Batches[batchID]; b != nil && int(chunk) < len(b.Chunks) {
			if l := b.Chunks[chunk].Lease; l != nil && l.Token == token {
				holder = l.AgentId
			}
		}
	})
	if holder == "" {
		return nil
	}
	return s.authorizeAgent(ctx, holder)
}

// openAudit sets up the audit log: a rotated JSON file when AuditLog is
// set, else the main log's output (logOut) with logger "audit". The latter
// gets a handler of its own, in the main log's format, that writes every
// level: sharing the main logger would drop every record, all written at
// INFO, under --log-level warn or error.
func (c *Coordinator) openAudit(logOut io.Writer) error {
	if c.cfg.AuditLog == "" {
		c.audit = monitoring.NewLogger(logOut, "debug", "audit").With("node_id", c.cfg.NodeID)
		return nil
	}
	w, err := monitoring.NewRotatingWriter(c.cfg.AuditLog, 100<<20, 10)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	c.auditFile = w
	c.audit = slog.New(slog.NewJSONHandler(w, nil)).With("logger", "audit", "node_id", c.cfg.NodeID)
	return nil
}
