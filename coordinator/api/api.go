// Package api serves vbatch's OpenAI-compatible HTTP API: files, batches,
// models, and the admin endpoints for keys and the cluster. It reads the
// replicated state locally and writes by proposing fsm commands through a
// Backend, answering errors with OpenAI's error object and status codes.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/vbatch/vbatch/coordinator/validate"
	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/httpsafe"
	"github.com/vbatch/vbatch/internal/ids"
	"github.com/vbatch/vbatch/monitoring"
)

// DefaultMaxUploadBytes caps one upload unless Config says otherwise: 200 MB
// as OpenAI's batch input limit.
const DefaultMaxUploadBytes = 200 << 20

// Body caps: every request body is read through http.MaxBytesReader and
// answered 413 past its cap. Uploads have their own (MaxUploadBytes) and
// snapshot restores MaxRestoreBytes.
const (
	// maxJSONBody caps a JSON request body and any other body an endpoint
	// does not expect to be large.
	maxJSONBody = 1 << 20
	// MaxInferenceBodyBytes caps an online inference request, images
	// inline as data URLs included.
	MaxInferenceBodyBytes = 32 << 20
	// jsonBodyTime bounds the arrival of a maxJSONBody-capped body.
	jsonBodyTime = time.Minute
)

// Config tunes the API.
type Config struct {
	// RootKey is the admin key of project "default". Once set, every
	// request needs the root key or a valid, unrevoked stored key.
	RootKey string
	// NoAuth, with no RootKey, serves every request as an admin of project
	// "default" without asking for a key: for a loopback dev cluster only.
	// With NoAuth false and no RootKey, only stored keys are accepted.
	NoAuth bool
	// MaxUploadBytes caps one uploaded file (default 200 MiB); a larger
	// upload is refused with 413 before anything is committed.
	MaxUploadBytes int64
	// Validate bounds batch input files; uploads with purpose "batch" are
	// refused at once when they hold more than Validate.MaxRequests lines
	// or a line longer than Validate.MaxLineBytes (default 10 MiB). The
	// coordinator validates each batch's input with the same Options; New
	// fills Validate.MaxTokens and MaxN from Limits where they are zero,
	// and ValidateOptions returns the result.
	Validate validate.Options
	// Models lists the models the cluster serves for GET /v1/models,
	// sorted by id; nil serves an empty list.
	Models func() []Model
	// Inference, if set, serves online POST /v1/chat/completions,
	// /v1/completions and /v1/embeddings (routing them to an agent). It
	// returns an error, answered as an OpenAI error object, only before it
	// has written anything. Nil answers 503. The body it reads holds at
	// most MaxInferenceBodyBytes and fits Limits.MaxTokens and Limits.MaxN.
	Inference func(w http.ResponseWriter, r *http.Request) error
	// Limits are the deployment's rate limits, quotas and request caps.
	// The zero value limits nothing beyond the fixed body caps.
	Limits Limits
	// Audit receives one record (message "audit", level INFO) per
	// administrative request: key create and revoke, batch create and
	// cancel, file delete, every cluster operation and agent drain,
	// whether it succeeded, failed or was refused. Give it a JSON handler
	// writing to the audit sink. Nil discards the records.
	Audit *slog.Logger
}

// API is the HTTP API of one coordinator.
type API struct {
	b        Backend
	cfg      Config
	log      *slog.Logger
	auditLog *slog.Logger
	limiter  *rateLimiter
	quotas   projectLocks
}

// New returns the API over b. A nil logger discards logs.
func New(b Backend, cfg Config, logger *slog.Logger) *API {
	if cfg.MaxUploadBytes <= 0 {
		cfg.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if cfg.Validate.MaxRequests <= 0 {
		cfg.Validate.MaxRequests = validate.DefaultMaxRequests
	}
	if cfg.Validate.MaxLineBytes <= 0 {
		cfg.Validate.MaxLineBytes = validate.DefaultMaxLineBytes
	}
	if cfg.Validate.MaxTokens <= 0 {
		cfg.Validate.MaxTokens = max(cfg.Limits.MaxTokens, 0)
	}
	if cfg.Validate.MaxN <= 0 {
		cfg.Validate.MaxN = max(cfg.Limits.MaxN, 0)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	audit := cfg.Audit
	if audit == nil {
		audit = slog.New(slog.DiscardHandler)
	}
	return &API{b: b, cfg: cfg, log: logger, auditLog: audit, limiter: newRateLimiter()}
}

// ValidateOptions are the options batch input files are validated with:
// Config.Validate with its defaults and the caps of Config.Limits. The
// coordinator's leader validates with them so that uploads and batches
// agree.
func (a *API) ValidateOptions() validate.Options { return a.cfg.Validate }

// handlerFunc is an endpoint: it writes a success itself and returns any
// failure, which serve answers as an OpenAI error object.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p *principal) error

// endpoint is one method of one route.
type endpoint struct {
	access access
	fn     handlerFunc
	// action names the endpoint in the audit log; empty: not audited.
	action string
	// maxBody caps the request body; 0 is maxJSONBody, bodyOwn leaves it
	// to the handler.
	maxBody int64
}

// bodyOwn marks an endpoint that bounds its body itself.
const bodyOwn = -1

// ep is an endpoint with the default body cap, not audited.
func ep(acc access, fn handlerFunc) endpoint { return endpoint{access: acc, fn: fn} }

// audited returns e recording every call in the audit log as action.
func (e endpoint) audited(action string) endpoint {
	e.action = action
	return e
}

// body returns e with its request body capped at n (bodyOwn: the handler
// caps it).
func (e endpoint) body(n int64) endpoint {
	e.maxBody = n
	return e
}

// Handler returns the http.Handler serving every route under /v1.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, methods map[string]endpoint) {
		mux.Handle(pattern, a.methods(methods))
	}
	route("/v1/files", map[string]endpoint{
		http.MethodGet:  ep(accessRead, a.listFiles),
		http.MethodPost: ep(accessWrite, a.uploadFile).body(bodyOwn),
	})
	route("/v1/files/{id}", map[string]endpoint{
		http.MethodGet:    ep(accessRead, a.getFile),
		http.MethodDelete: ep(accessWrite, a.deleteFile).audited(auditFileDelete),
	})
	route("/v1/files/{id}/content", map[string]endpoint{
		http.MethodGet: ep(accessRead, a.fileContent),
	})
	route("/v1/batches", map[string]endpoint{
		http.MethodGet:  ep(accessRead, a.listBatches),
		http.MethodPost: ep(accessWrite, a.createBatch).audited(auditBatchCreate),
	})
	route("/v1/batches/{id}", map[string]endpoint{
		http.MethodGet: ep(accessRead, a.getBatch),
	})
	route("/v1/batches/{id}/cancel", map[string]endpoint{
		http.MethodPost: ep(accessWrite, a.cancelBatch).audited(auditBatchCancel),
	})
	route("/v1/models", map[string]endpoint{
		http.MethodGet: ep(accessModels, a.listModels),
	})
	route("/v1/models/{id...}", map[string]endpoint{
		http.MethodGet: ep(accessModels, a.getModel),
	})
	route("/v1/admin/keys", map[string]endpoint{
		http.MethodGet:  ep(accessAdmin, a.listKeys),
		http.MethodPost: ep(accessAdmin, a.createKey).audited(auditKeyCreate),
	})
	route("/v1/admin/keys/{id}", map[string]endpoint{
		http.MethodDelete: ep(accessAdmin, a.revokeKey).audited(auditKeyRevoke),
	})
	route("/v1/admin/cluster/status", map[string]endpoint{
		http.MethodGet: ep(accessAdmin, a.clusterStatus),
	})
	route("/v1/admin/cluster/transfer-leadership", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.transferLeadership).audited(auditTransferLeader),
	})
	route("/v1/admin/cluster/remove-peer", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.removePeer).audited(auditRemovePeer),
	})
	route("/v1/admin/cluster/join", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.joinPool).audited(auditJoin),
	})
	route("/v1/admin/cluster/keyring", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.keyring).audited(auditKeyring),
	})
	route("/v1/admin/cluster/snapshot", map[string]endpoint{
		http.MethodGet: ep(accessAdmin, a.saveSnapshot).audited(auditSnapshotSave),
	})
	route("/v1/admin/cluster/snapshot/restore", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.restoreSnapshot).audited(auditSnapshotRestore).body(MaxRestoreBytes),
	})
	route("/v1/admin/agents", map[string]endpoint{
		http.MethodGet: ep(accessAdmin, a.listAgents),
	})
	route("/v1/admin/agents/{id}", map[string]endpoint{
		http.MethodDelete: ep(accessAdmin, a.removeAgent).audited(auditAgentRemove),
	})
	route("/v1/admin/agents/{id}/drain", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.drainAgent).audited(auditAgentDrain),
	})
	route("/v1/admin/agents/{id}/undrain", map[string]endpoint{
		http.MethodPost: ep(accessAdmin, a.undrainAgent).audited(auditAgentUndrain),
	})
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} {
		route(path, map[string]endpoint{
			http.MethodPost: ep(accessInference, a.inference).body(MaxInferenceBodyBytes),
		})
	}
	a.debugRoutes(route)
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, notFound("", "Invalid URL (%s %s)", r.Method, r.URL.Path))
	}))
	return a.requestID(a.recoverer(mux))
}

// methods dispatches on the method: 405 for one the route lacks, then
// authentication, then the scope check, then the endpoint.
func (a *API) methods(m map[string]endpoint) http.Handler {
	allow := make([]string, 0, len(m))
	for method := range m {
		allow = append(allow, method)
	}
	allowHeader := strings.Join(sortedStrings(allow), ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The middleware around the API sees a copy of the request without
		// the pattern the mux matched: hand it out.
		monitoring.SetRoute(r.Context(), r.Pattern)
		ep, ok := m[r.Method]
		if !ok {
			w.Header().Set("Allow", allowHeader)
			a.writeError(w, r, &apiError{status: http.StatusMethodNotAllowed, typ: typeInvalidRequest, code: codeMethodNotAllowed,
				message: fmt.Sprintf("Method %s is not allowed on %s; use %s.", r.Method, r.URL.Path, allowHeader)})
			return
		}
		p, aerr := a.authenticate(r)
		if aerr != nil {
			a.writeError(w, r, aerr)
			return
		}
		if monitoring.SentryActive(r.Context()) {
			r = r.WithContext(monitoring.SetUserContext(r.Context(), p.keyID, p.project))
		}
		a.serveEndpoint(w, r, ep, p)
	})
}

// serveEndpoint runs an authenticated request through the key's rate
// limit, the scope check and the body cap to the endpoint, and writes the
// audit record of an audited one however it ends.
func (a *API) serveEndpoint(w http.ResponseWriter, r *http.Request, ep endpoint, p *principal) {
	var target *auditTarget
	if ep.action != "" {
		r, target = withAudit(r, p)
	}
	refuse := func(err *apiError) {
		if target != nil {
			a.audit(r, ep.action, p, target, err)
		}
		a.writeError(w, r, err)
	}
	if err := a.rateLimit(w, p); err != nil {
		refuse(err)
		return
	}
	if !p.allows(ep.access) {
		refuse(&apiError{status: http.StatusForbidden, typ: typeInvalidRequest, code: codeInsufficientPerms,
			message: fmt.Sprintf("You have insufficient permissions for this operation: the API key lacks the scope %s needs.", r.Method+" "+r.URL.Path)})
		return
	}
	switch {
	case ep.maxBody == 0:
		// A JSON body of at most 1 MiB has a minute to arrive, however
		// slowly it trickles in.
		httpsafe.BodyDeadline(r, time.Now().Add(jsonBodyTime))
		r.Body = http.MaxBytesReader(w, r.Body, maxJSONBody)
	case ep.maxBody > 0:
		r.Body = http.MaxBytesReader(w, r.Body, ep.maxBody)
	}
	if target != nil {
		// A handler that panics (an aborted stream) is audited too, as the
		// panic unwinds to the recoverer.
		done := false
		defer func() {
			if !done {
				a.audit(r, ep.action, p, target, errAborted)
			}
		}()
		err := ep.fn(w, r, p)
		done = true
		a.audit(r, ep.action, p, target, err)
		if err != nil {
			a.writeError(w, r, err)
		}
		return
	}
	if err := ep.fn(w, r, p); err != nil {
		a.writeError(w, r, err)
	}
}

// requestIDHeader carries the id of a request; a client may choose it.
const requestIDHeader = "X-Request-ID"

type ctxKey struct{}

// requestID gives every request an id, taken from the request when it is
// a sane token, and echoes it on the response.
func (a *API) requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(requestIDHeader)
		if !saneID(id) {
			id = "req_" + ids.Random(24)
		}
		w.Header().Set(requestIDHeader, id)
		r.Header.Set(requestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(monitoring.WithRequestID(r.Context(), id)))
	})
}

func saneID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// statusWriter remembers whether and what a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// errPanic marks the 500 answered for a panic, already reported to Sentry.
var errPanic = errors.New("handler panicked")

// recoverer turns a panicking handler into a logged 500 (and a Sentry
// event), names the Sentry transaction after the matched route, and logs
// every request once it is answered.
func (a *API) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		defer func() {
			if rec := recover(); rec != nil {
				if rec == http.ErrAbortHandler {
					// A stream cut short (its agent or client gone): logged
					// as such, then left to net/http to close the connection.
					a.log.Debug("request", "request_id", r.Header.Get(requestIDHeader), "method", r.Method, "path", r.URL.Path,
						"status", sw.status, "aborted", true, "duration", time.Since(start))
					panic(rec)
				}
				a.log.Error("handler panicked", "request_id", r.Header.Get(requestIDHeader), "method", r.Method,
					"path", r.URL.Path, "panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
				monitoring.CapturePanic(r.Context(), rec)
				if sw.status == 0 {
					a.writeError(sw, r, toAPIError(fmt.Errorf("%w: %v", errPanic, rec)))
				}
			}
			monitoring.SetTransactionName(r.Context(), monitoring.RouteName(r))
			a.log.Debug("request", "request_id", r.Header.Get(requestIDHeader), "method", r.Method, "path", r.URL.Path,
				"status", sw.status, "duration", time.Since(start))
		}()
		next.ServeHTTP(sw, r)
	})
}

// writeError answers err as an OpenAI error object; server errors are
// logged with their cause, and internal errors (500, not the retryable
// 503 of a failover) are reported to Sentry.
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	if ae.status >= 500 {
		a.log.Error("request failed", "request_id", r.Header.Get(requestIDHeader), "method", r.Method,
			"path", r.URL.Path, "status", ae.status, "err", err)
	}
	if ae.status >= 500 && ae.status != http.StatusServiceUnavailable && !errors.Is(err, errPanic) {
		monitoring.CaptureException(r.Context(), err, map[string]any{
			"status_code": ae.status, "method": r.Method, "path": r.URL.Path,
		})
	}
	if ae.status == http.StatusConflict {
		// Every 409 here is a state conflict (a file in use, a batch that
		// has ended) that a retry a second later cannot resolve; the
		// OpenAI SDKs retry 409 twice unless told not to.
		w.Header().Set(shouldRetryHeader, "false")
	}
	writeJSON(w, ae.status, ae.body())
}

// shouldRetryHeader tells the OpenAI SDKs whether to retry an error
// answer, overriding their choice by status code.
const shouldRetryHeader = "X-Should-Retry"

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Every answer is built from plain structs; this is a bug.
		status = http.StatusInternalServerError
		body, _ = json.Marshal(toAPIError(err).body())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// readJSON decodes a JSON object body into v. The body is capped by
// serveEndpoint; past the cap the answer is 413.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		if tooLarge := bodyTooLarge(err); tooLarge != nil {
			return tooLarge
		}
		msg := "We could not parse the JSON body of your request. The API expects a JSON object; see https://platform.openai.com/docs/api-reference."
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return badRequest(codeInvalidJSON, typeErr.Field, "Invalid type for '%s': expected %s.", typeErr.Field, typeErr.Type)
		}
		return badRequest(codeInvalidJSON, "", "%s", msg)
	}
	if dec.More() {
		return badRequest(codeInvalidJSON, "", "The request body holds more than one JSON value.")
	}
	// Only whitespace may follow: a stray delimiter is not one JSON
	// value, and whitespace past the cap is still past it.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if tooLarge := bodyTooLarge(err); tooLarge != nil {
			return tooLarge
		}
		return badRequest(codeInvalidJSON, "", "The request body holds more than one JSON value.")
	}
	return nil
}

// bodyTooLarge is the 413 for an error of a body read past its cap, or nil.
func bodyTooLarge(err error) *apiError {
	var mbe *http.MaxBytesError
	if !errors.As(err, &mbe) {
		return nil
	}
	return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeRequestTooLarge,
		message: fmt.Sprintf("The request body is larger than the maximum of %d bytes.", mbe.Limit), cause: err}
}

// find runs fn over the state and, when fn reports a miss, once more after
// a consistent read: an object just created through another coordinator
// is found even before this one has applied it. A failing consistent read
// is the error; otherwise the miss stands and the caller answers it.
func (a *API) find(r *http.Request, fn func(s *fsm.State) bool) error {
	found := false
	a.b.FSM().View(func(s *fsm.State) { found = fn(s) })
	if found {
		return nil
	}
	if err := a.b.ConsistentRead(r.Context()); err != nil {
		return fmt.Errorf("consistent read: %w", err)
	}
	a.b.FSM().View(func(s *fsm.State) { fn(s) })
	return nil
}

// consistent makes a read see every committed write when the client asks
// for it with ?consistent=true or the X-Vbatch-Consistent header.
func (a *API) consistent(r *http.Request) error {
	if r.URL.Query().Get("consistent") != "true" && !strings.EqualFold(r.Header.Get("X-Vbatch-Consistent"), "true") {
		return nil
	}
	if err := a.b.ConsistentRead(r.Context()); err != nil {
		return fmt.Errorf("consistent read: %w", err)
	}
	return nil
}
