package monitoring

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/getsentry/sentry-go"
)

// requestIDHeader is the header the API reads and echoes the request id in.
const requestIDHeader = "X-Request-ID"

// SentryHTTP gives every request its own Sentry hub (a clone of the process
// hub, bound to the request's context) and a transaction named after the
// route, tagged with request_id when the request carries X-Request-ID.
// A panic is captured with the request's scope and then re-panicked, so an
// inner or outer recoverer still answers it. With Sentry off it only calls
// next.
func SentryHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sentry.CurrentHub().Client() == nil && hubFrom(r.Context()) == nil {
			next.ServeHTTP(w, r)
			return
		}
		hub := sentry.CurrentHub().Clone()
		hub.Scope().SetRequest(r)
		ctx := sentry.SetHubOnContext(r.Context(), hub)
		if id := r.Header.Get(requestIDHeader); id != "" {
			ctx = WithRequestID(ctx, id)
		}
		tx := sentry.StartTransaction(ctx, r.Method+" "+r.URL.Path,
			sentry.WithOpName("http.server"),
			sentry.ContinueFromRequest(r),
			sentry.WithTransactionSource(sentry.SourceURL),
		)
		tx.SetData("http.request.method", r.Method)
		r2 := r.WithContext(tx.Context())
		sw := &sentryStatusWriter{ResponseWriter: w}
		defer func() {
			rec := recover()
			if rec != nil && rec != http.ErrAbortHandler {
				hub.RecoverWithContext(tx.Context(), rec)
				tx.Status = sentry.SpanStatusInternalError
			}
			finishHTTPTransaction(tx, r2, sw)
			if rec != nil {
				panic(rec)
			}
		}()
		next.ServeHTTP(sw, r2)
	})
}

// finishHTTPTransaction sets the name, status and request id of tx from
// what the handler did, then sends it.
func finishHTTPTransaction(tx *sentry.Span, r *http.Request, sw *sentryStatusWriter) {
	if tx.Source == sentry.SourceURL && r.Pattern != "" && r.Pattern != "/" {
		SetTransactionName(tx.Context(), RouteName(r))
	}
	status := sw.status
	if status == 0 {
		status = http.StatusOK
	}
	if tx.Status == sentry.SpanStatusUndefined {
		tx.Status = sentry.HTTPtoSpanStatus(status)
	}
	tx.SetData("http.response.status_code", status)
	tx.SetTag(TagStatusCode, strconv.Itoa(status))
	if id := sw.Header().Get(requestIDHeader); id != "" {
		tx.SetTag(TagRequestID, id)
	}
	tx.Finish()
}

// RouteName names the route that served r after the mux matched it:
// "GET /v1/batches/{id}"; the bare path when no pattern matched.
func RouteName(r *http.Request) string {
	switch {
	case r.Pattern == "":
		return r.Method + " " + r.URL.Path
	case strings.Contains(r.Pattern, " "):
		return r.Pattern
	default:
		return r.Method + " " + r.Pattern
	}
}

// sentryStatusWriter remembers the status a handler answered with.
type sentryStatusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader implements http.ResponseWriter.
func (s *sentryStatusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (s *sentryStatusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush implements http.Flusher for handlers that stream.
func (s *sentryStatusWriter) Flush() {
	_ = http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *sentryStatusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// SentryInterceptor returns a connect interceptor for RPC handlers: each
// call gets its own hub and a transaction named after the procedure;
// errors with the codes Internal, Unknown or DataLoss are captured, and
// panics are captured and re-panicked. Client-side calls pass through.
func SentryInterceptor() connect.Interceptor { return sentryInterceptor{} }

type sentryInterceptor struct{}

// WrapUnary implements connect.Interceptor.
func (sentryInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (resp connect.AnyResponse, err error) {
		if req.Spec().IsClient || sentry.CurrentHub().Client() == nil {
			return next(ctx, req)
		}
		ctx, tx := startRPC(ctx, req.Spec().Procedure, req.Peer().Addr)
		defer func() { finishRPC(ctx, tx, recover(), err) }()
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor; client streams pass
// through.
func (sentryInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (sentryInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) (err error) {
		if sentry.CurrentHub().Client() == nil {
			return next(ctx, conn)
		}
		ctx, tx := startRPC(ctx, conn.Spec().Procedure, conn.Peer().Addr)
		defer func() { finishRPC(ctx, tx, recover(), err) }()
		return next(ctx, conn)
	}
}

// startRPC binds a fresh hub and a transaction to ctx for one RPC.
func startRPC(ctx context.Context, procedure, peer string) (context.Context, *sentry.Span) {
	hub := sentry.CurrentHub().Clone()
	hub.Scope().SetTag("rpc.procedure", procedure)
	if peer != "" {
		hub.Scope().SetTag("rpc.peer", peer)
	}
	ctx = sentry.SetHubOnContext(ctx, hub)
	tx := sentry.StartTransaction(ctx, procedure,
		sentry.WithOpName("rpc.server"),
		sentry.WithTransactionSource(sentry.SourceRoute),
	)
	return tx.Context(), tx
}

// finishRPC captures a panic or a server-fault error, sets the status of
// tx and sends it; a panic is re-raised afterwards.
func finishRPC(ctx context.Context, tx *sentry.Span, rec any, err error) {
	hub := hubFrom(ctx)
	code := connect.CodeOf(err)
	switch {
	case rec != nil:
		hub.RecoverWithContext(ctx, rec)
		tx.Status = sentry.SpanStatusInternalError
	case err == nil:
		tx.Status = sentry.SpanStatusOK
	case serverFault(code):
		hub.WithScope(func(scope *sentry.Scope) {
			scope.SetTag("rpc.code", code.String())
			hub.CaptureException(err)
		})
		tx.Status = sentry.SpanStatusInternalError
	default:
		tx.Status = sentry.SpanStatusUnknown
	}
	if err != nil {
		tx.SetTag("rpc.code", code.String())
	}
	tx.Finish()
	if rec != nil {
		panic(rec)
	}
}

// serverFault reports whether code means a bug or broken state on the
// server rather than a caller mistake or a normal outcome.
func serverFault(code connect.Code) bool {
	return code == connect.CodeInternal || code == connect.CodeUnknown || code == connect.CodeDataLoss
}
