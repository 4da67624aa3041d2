package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
)

// Audit actions: one per administrative endpoint. Every authenticated
// attempt at one, allowed or not, writes one record to Config.Audit;
// requests without a valid key have no actor and stay in the request log.
const (
	auditKeyCreate       = "key.create"
	auditKeyRevoke       = "key.revoke"
	auditBatchCreate     = "batch.create"
	auditBatchCancel     = "batch.cancel"
	auditFileDelete      = "file.delete"
	auditTransferLeader  = "cluster.transfer_leadership"
	auditRemovePeer      = "cluster.remove_peer"
	auditJoin            = "cluster.join"
	auditKeyring         = "cluster.keyring"
	auditSnapshotSave    = "cluster.snapshot_save"
	auditSnapshotRestore = "cluster.snapshot_restore"
	auditAgentDrain      = "agent.drain"
	auditAgentUndrain    = "agent.undrain"
	auditAgentRemove     = "agent.remove"
)

// Outcomes of an audit record: the action was done, refused for lack of
// scope or over a limit, or failed.
const (
	auditOutcomeOK     = "ok"
	auditOutcomeDenied = "denied"
	auditOutcomeError  = "error"
)

// auditTarget is what an audited handler acted on. The handler fills it
// in when the request does not say it in its path: the id of an object it
// created, the project of a key it revoked.
type auditTarget struct {
	project string
	target  string
}

type auditKey struct{}

// setAuditTarget records, for the audit record of r, the project and the
// object acted on; an empty argument keeps what is there.
func setAuditTarget(r *http.Request, project, target string) {
	t, ok := r.Context().Value(auditKey{}).(*auditTarget)
	if !ok {
		return
	}
	if project != "" {
		t.project = project
	}
	if target != "" {
		t.target = target
	}
}

// withAudit returns r carrying an audit target that starts as p's project
// and the id in r's path.
func withAudit(r *http.Request, p *principal) (*http.Request, *auditTarget) {
	t := &auditTarget{project: p.project, target: r.PathValue("id")}
	return r.WithContext(context.WithValue(r.Context(), auditKey{}, t)), t
}

// audit writes the record of one administrative request: who (actor, the
// key id), what (action, project, target), how it ended (outcome and, when
// not ok, the HTTP status and error), and from where (remote_addr,
// request_id).
func (a *API) audit(r *http.Request, action string, p *principal, t *auditTarget, err error) {
	attrs := []slog.Attr{
		slog.String("action", action),
		slog.String("actor", p.keyID),
		slog.String("project", t.project),
		slog.String("target", t.target),
	}
	switch {
	case err == nil:
		attrs = append(attrs, slog.String("outcome", auditOutcomeOK))
	default:
		ae := toAPIError(err)
		outcome := auditOutcomeError
		if ae.status == http.StatusForbidden || ae.status == http.StatusTooManyRequests {
			outcome = auditOutcomeDenied
		}
		msg := ae.message
		if errors.Is(err, errAborted) {
			msg = errAborted.Error()
		}
		attrs = append(attrs, slog.String("outcome", outcome), slog.Int("status", ae.status), slog.String("error", msg))
	}
	attrs = append(attrs,
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("remote_addr", r.RemoteAddr),
		slog.String("request_id", r.Header.Get(requestIDHeader)),
	)
	a.auditLog.LogAttrs(r.Context(), slog.LevelInfo, "audit", attrs...)
}

// errAborted stands, in its audit record, for a handler that panicked
// (a stream cut short, or a bug the recoverer answers).
var errAborted = errors.New("the handler aborted the response")
