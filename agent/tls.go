package agent

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/vbatch/vbatch/internal/netutil"
	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/monitoring"
)

// setupTLS loads the agent's certificate when TLS is configured. The
// agent's identity is the node id its certificate names: a configured id
// that differs is an error, and an unset one is taken from the certificate.
func (a *Agent) setupTLS() error {
	if !a.cfg.TLS.Enabled() {
		if !netutil.IsLoopback(a.cfg.MetricsAddr) && !a.cfg.OnlineFromLoopbackOnly {
			a.log.Warn("TLS is off: the online-inference endpoint on --metrics-addr serves the engine to anyone who can reach it, with no key (docs/security.md)", "metrics_addr", a.cfg.MetricsAddr)
		}
		return nil
	}
	s, err := tlsutil.Load(a.cfg.TLS, a.cfg.ClusterName, tlsutil.RoleAgent)
	if err != nil {
		return fmt.Errorf("agent TLS: %w", err)
	}
	self := s.Self()
	if self.Node == "" {
		return fmt.Errorf("agent TLS: certificate %s names no node id (make it with `vbatch tls cert create --agent --node ID`)", a.cfg.TLS.CertFile)
	}
	if a.cfg.NodeID != "" && a.cfg.NodeID != self.Node {
		return fmt.Errorf("agent TLS: --node-id %q differs from the certificate's node id %q", a.cfg.NodeID, self.Node)
	}
	a.cfg.NodeID = self.Node
	a.tls = s
	a.metrics.registry.MustRegister(monitoring.NewCertExpiryGauge(func() int64 { return s.Expires().Unix() }))
	return nil
}

// ReloadTLS reads the certificate, key and CA files again (on SIGHUP).
// New connections use them; on error the current ones stay in use.
func (a *Agent) ReloadTLS() error {
	if a.tls == nil {
		return errors.New("TLS is not configured")
	}
	if err := a.tls.Reload(); err != nil {
		return fmt.Errorf("reload TLS: %w", err)
	}
	a.log.Info("TLS certificates reloaded", "expires", a.tls.Expires())
	return nil
}

// onlyCoordinators admits, when TLS is on, only callers holding a server
// certificate of the cluster: online inference reaches the engine through
// coordinators, never straight from the network.
func (a *Agent) onlyCoordinators(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.tls != nil {
			if id, ok := a.tls.PeerIdentity(r.TLS); !ok || id.Role != tlsutil.RoleServer {
				writeOpenAIError(w, http.StatusForbidden, "permission_error", "online inference is served through a coordinator")
				return
			}
		}
		next(w, r)
	}
}
