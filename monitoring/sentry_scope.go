package monitoring

import (
	"context"
	"errors"
	"strconv"

	"connectrpc.com/connect"
	"github.com/getsentry/sentry-go"
)

// Tags that mark captured events; BeforeSend reads them.
const (
	// TagStatusCode carries the HTTP status an error was answered with;
	// events with a 4xx are dropped as expected client errors.
	TagStatusCode = "http.status_code"
	// TagExpected set to "true" marks an event as an expected client error.
	TagExpected = "error.expected"
	// TagRequestID carries the X-Request-ID of the request.
	TagRequestID = "request_id"
	// TagBatchID carries the batch an event belongs to.
	TagBatchID = "batch_id"
)

// HTTPStatuser is an error that knows the HTTP status it is answered with.
type HTTPStatuser interface {
	HTTPStatus() int
}

// hubFrom returns the hub bound to ctx, or nil when there is none.
func hubFrom(ctx context.Context) *sentry.Hub {
	if ctx == nil {
		return nil
	}
	return sentry.GetHubFromContext(ctx)
}

// ensureHub returns ctx with its own hub: the one already there, or a clone
// of the process hub. Scope changes on it never reach other requests.
func ensureHub(ctx context.Context) (context.Context, *sentry.Hub) {
	if ctx == nil {
		ctx = context.Background()
	}
	if hub := hubFrom(ctx); hub != nil {
		return ctx, hub
	}
	hub := sentry.CurrentHub().Clone()
	return sentry.SetHubOnContext(ctx, hub), hub
}

// captureHub is the hub a capture goes through: ctx's own or, when ctx has
// none, a throwaway clone so the process scope stays untouched.
func captureHub(ctx context.Context) *sentry.Hub {
	if hub := hubFrom(ctx); hub != nil {
		return hub
	}
	return sentry.CurrentHub().Clone()
}

// CaptureException reports err to Sentry with the scope of ctx plus extra
// (the seed's capture_exception(error, context)). An error that carries a
// 4xx status (HTTPStatuser, or a connect error with a client code) is
// tagged so BeforeSend drops it. It returns the event id, nil when Sentry
// is off or the event was dropped.
func CaptureException(ctx context.Context, err error, extra map[string]any) *sentry.EventID {
	if err == nil {
		return nil
	}
	hub := captureHub(ctx)
	if hub.Client() == nil {
		return nil
	}
	var id *sentry.EventID
	hub.WithScope(func(scope *sentry.Scope) {
		if code := statusOf(err); code != 0 {
			scope.SetTag(TagStatusCode, strconv.Itoa(code))
		}
		applyExtra(scope, extra)
		id = hub.CaptureException(err)
	})
	return id
}

// CaptureMessage reports msg at level with the scope of ctx plus extra
// (the seed's capture_message). It returns the event id, nil when Sentry is
// off or the event was dropped.
func CaptureMessage(ctx context.Context, msg string, level sentry.Level, extra map[string]any) *sentry.EventID {
	hub := captureHub(ctx)
	if hub.Client() == nil {
		return nil
	}
	var id *sentry.EventID
	hub.WithScope(func(scope *sentry.Scope) {
		if level != "" {
			scope.SetLevel(level)
		}
		applyExtra(scope, extra)
		id = hub.CaptureMessage(msg)
	})
	return id
}

// applyExtra adds extra to scope; a "status_code" entry also sets the
// status tag so 4xx reports are filtered.
func applyExtra(scope *sentry.Scope, extra map[string]any) {
	if len(extra) == 0 {
		return
	}
	scope.SetContext("extra", sentry.Context(copyExtra(extra)))
	if v, ok := extra["status_code"]; ok {
		switch c := v.(type) {
		case int:
			scope.SetTag(TagStatusCode, strconv.Itoa(c))
		case string:
			scope.SetTag(TagStatusCode, c)
		}
	}
}

// copyExtra copies extra so that scrubbing the event never changes the
// caller's map.
func copyExtra(extra map[string]any) map[string]any {
	out := make(map[string]any, len(extra))
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// SetUserContext records who a request acts for (the API key id and its
// project) on the hub of ctx, adding one if ctx has none; use the returned
// context. No e-mail or IP is recorded: PII stays off.
func SetUserContext(ctx context.Context, id, project string) context.Context {
	ctx, hub := ensureHub(ctx)
	hub.Scope().SetUser(sentry.User{ID: id})
	if project != "" {
		hub.Scope().SetTag("project", project)
	}
	return ctx
}

// SetBatchContext records the batch ctx works on (the seed's
// set_batch_context) on the hub of ctx, adding one if ctx has none, and
// carries batch_id for log lines too; use the returned context.
func SetBatchContext(ctx context.Context, batchID, model string, requests int64) context.Context {
	ctx, hub := ensureHub(ctx)
	hub.Scope().SetTag(TagBatchID, batchID)
	if model != "" {
		hub.Scope().SetTag("model", model)
	}
	hub.Scope().SetContext("batch", sentry.Context{
		"batch_id": batchID,
		"model":    model,
		"requests": requests,
	})
	return WithBatchID(ctx, batchID)
}

// ClearContext empties the scope of ctx's hub (user, tags, contexts,
// breadcrumbs). Without a hub on ctx it does nothing: the process scope is
// never touched.
func ClearContext(ctx context.Context) {
	if hub := hubFrom(ctx); hub != nil {
		hub.Scope().Clear()
	}
}

// statusOf returns the HTTP status err stands for, 0 when unknown.
func statusOf(err error) int {
	var hs HTTPStatuser
	if errors.As(err, &hs) {
		return hs.HTTPStatus()
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return connectHTTPStatus(ce.Code())
	}
	return 0
}

// connectHTTPStatus maps the connect codes that mean "client mistake" to a
// 4xx status; other codes return 0.
func connectHTTPStatus(code connect.Code) int {
	switch code {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeOutOfRange:
		return 400
	case connect.CodeUnauthenticated:
		return 401
	case connect.CodePermissionDenied:
		return 403
	case connect.CodeNotFound:
		return 404
	case connect.CodeAlreadyExists, connect.CodeAborted:
		return 409
	case connect.CodeResourceExhausted:
		return 429
	case connect.CodeCanceled:
		return 499
	}
	return 0
}

// CapturePanic reports a recovered panic value with the scope of ctx, for
// recoverers that answer the request themselves. It returns the event id,
// nil when Sentry is off.
func CapturePanic(ctx context.Context, rec any) *sentry.EventID {
	hub := captureHub(ctx)
	if hub.Client() == nil || rec == nil {
		return nil
	}
	return hub.RecoverWithContext(ctx, rec)
}

// SentryActive reports whether ctx has a Sentry hub with a client, so
// callers can skip building scope data nobody will send.
func SentryActive(ctx context.Context) bool {
	hub := hubFrom(ctx)
	return hub != nil && hub.Client() != nil
}
