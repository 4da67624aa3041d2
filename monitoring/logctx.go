package monitoring

import (
	"context"
	"log/slog"

	"github.com/getsentry/sentry-go"
)

type requestIDKey struct{}

type batchIDKey struct{}

// WithRequestID returns ctx carrying the request id: log calls that take
// the context (InfoContext…) on a NewLogger logger add request_id, and the
// Sentry hub of ctx, if any, is tagged with it.
func WithRequestID(ctx context.Context, id string) context.Context {
	if hub := hubFrom(ctx); hub != nil {
		hub.Scope().SetTag(TagRequestID, id)
	}
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestIDFrom returns the request id of ctx, "" when none.
func RequestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// WithBatchID returns ctx carrying the batch id, added as batch_id to log
// lines written with the context.
func WithBatchID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, batchIDKey{}, id)
}

// BatchIDFrom returns the batch id of ctx, "" when none.
func BatchIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(batchIDKey{}).(string)
	return id
}

// LoggerFrom returns base with the request_id and batch_id of ctx attached,
// for code that logs without passing the context. Use it or the
// ...Context log calls, not both: together they repeat the ids.
func LoggerFrom(ctx context.Context, base *slog.Logger) *slog.Logger {
	if id := RequestIDFrom(ctx); id != "" {
		base = base.With("request_id", id)
	}
	if id := BatchIDFrom(ctx); id != "" {
		base = base.With("batch_id", id)
	}
	return base
}

// SetTransactionName names the Sentry transaction of ctx after the route
// that served it ("GET /v1/batches/{id}"), so requests group by route, not
// by URL. It does nothing when ctx has no transaction.
func SetTransactionName(ctx context.Context, name string) {
	if tx := sentry.TransactionFromContext(ctx); tx != nil && name != "" {
		tx.Name = name
		tx.Source = sentry.SourceRoute
	}
}

// contextHandler adds request_id and batch_id from the context of each
// record, unless the record already carries them, and keeps one "logger"
// field: a later With("logger", …) renames the component instead of adding
// a second key, which JSON readers (Loki, jq) would resolve arbitrarily.
type contextHandler struct {
	inner slog.Handler
	// name is the current logger field, written by Handle.
	name string
	// grouped is set after WithGroup: attributes then belong to the group
	// and pass through untouched.
	grouped bool
}

// Enabled implements slog.Handler.
func (h contextHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle implements slog.Handler.
func (h contextHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	if h.name != "" {
		out.AddAttrs(slog.String("logger", h.name))
	}
	var reqID, batchID string
	if ctx != nil {
		reqID, batchID = RequestIDFrom(ctx), BatchIDFrom(ctx)
	}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "request_id":
			reqID = ""
		case "batch_id":
			batchID = ""
		}
		out.AddAttrs(a)
		return true
	})
	if reqID != "" {
		out.AddAttrs(slog.String("request_id", reqID))
	}
	if batchID != "" {
		out.AddAttrs(slog.String("batch_id", batchID))
	}
	return h.inner.Handle(ctx, out)
}

// WithAttrs implements slog.Handler.
func (h contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if h.grouped {
		h.inner = h.inner.WithAttrs(attrs)
		return h
	}
	rest := make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		if a.Key == "logger" {
			h.name = a.Value.String()
			continue
		}
		rest = append(rest, a)
	}
	if len(rest) > 0 {
		h.inner = h.inner.WithAttrs(rest)
	}
	return h
}

// WithGroup implements slog.Handler.
func (h contextHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	inner := h.inner
	if h.name != "" && !h.grouped {
		inner = inner.WithAttrs([]slog.Attr{slog.String("logger", h.name)})
	}
	return contextHandler{inner: inner.WithGroup(name), grouped: true}
}
