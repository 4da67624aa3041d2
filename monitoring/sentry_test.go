package monitoring

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"github.com/getsentry/sentry-go"

	"github.com/vbatch/vbatch/monitoring/sentrytest"
)

// startSentry starts a fake Sentry, points SENTRY_DSN at it and runs
// InitSentry with env applied; cleanup flushes and unbinds the client.
func startSentry(t *testing.T, env map[string]string) *sentrytest.Server {
	t.Helper()
	f := sentrytest.New(t)
	t.Setenv(EnvSentryDSN, f.DSN())
	t.Setenv(EnvEnableSentry, "")
	t.Setenv(EnvSentryTracesSampleRate, "1")
	t.Setenv(EnvSentryEnvironment, "test")
	t.Setenv(EnvSentryProfilesSampleRate, "")
	for k, v := range env {
		t.Setenv(k, v)
	}
	shutdown, err := InitSentry("coordinator", "v1.2.3", nil)
	if err != nil {
		t.Fatalf("InitSentry: %v", err)
	}
	t.Cleanup(func() {
		shutdown()
		sentry.CurrentHub().BindClient(nil)
	})
	return f
}

func TestSentryConfigFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cases := []struct {
		name    string
		vars    map[string]string
		want    SentryConfig
		wantErr bool
	}{
		{"empty", nil, SentryConfig{TracesSampleRate: 0.1}, false},
		{"dsn enables", map[string]string{EnvSentryDSN: "http://k@h/1"},
			SentryConfig{DSN: "http://k@h/1", Enabled: true, TracesSampleRate: 0.1}, false},
		{"explicit off", map[string]string{EnvSentryDSN: "http://k@h/1", EnvEnableSentry: "false"},
			SentryConfig{DSN: "http://k@h/1", TracesSampleRate: 0.1}, false},
		{"on without dsn", map[string]string{EnvEnableSentry: "true"}, SentryConfig{TracesSampleRate: 0.1}, false},
		{"rate and env", map[string]string{EnvSentryDSN: "d", EnvSentryTracesSampleRate: "0.5",
			EnvSentryEnvironment: "prod", EnvSentryProfilesSampleRate: "0.1"},
			SentryConfig{DSN: "d", Enabled: true, TracesSampleRate: 0.5, Environment: "prod", ProfilesRequested: true}, false},
		{"bad rate", map[string]string{EnvSentryTracesSampleRate: "2"}, SentryConfig{}, true},
		{"bad bool", map[string]string{EnvEnableSentry: "maybe"}, SentryConfig{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SentryConfigFromEnv(env(tc.vars))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want error, got %+v", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestSentryDisabledIsNoop(t *testing.T) {
	t.Setenv(EnvSentryDSN, "")
	shutdown, err := InitSentry("agent", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown()
	if id := CaptureException(context.Background(), errors.New("x"), nil); id != nil {
		t.Fatalf("captured %v with sentry off", *id)
	}
	called := false
	h := SentryHTTP(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	if !called {
		t.Fatal("SentryHTTP did not call next with sentry off")
	}
}

func TestCaptureExceptionWithBatchContext(t *testing.T) {
	f := startSentry(t, nil)
	ctx := SetBatchContext(context.Background(), "batch_abc", "gemma-3-4b-it", 5000)
	ctx = SetUserContext(ctx, "key_123", "proj_9")
	if BatchIDFrom(ctx) != "batch_abc" {
		t.Fatalf("batch id not on context")
	}
	CaptureException(ctx, fmt.Errorf("chunk 3: %w", errors.New("engine died")), map[string]any{"chunk": 3})
	CaptureMessage(ctx, "batch slow", sentry.LevelWarning, nil)

	events := f.WaitItems("event", 2)
	if len(events) != 2 {
		t.Fatalf("got %d events, want 2: %+v", len(events), events)
	}
	ev := findItem(t, events, "chunk 3")
	if ev.Release != "v1.2.3" || ev.Environment != "test" {
		t.Errorf("release/environment = %q/%q", ev.Release, ev.Environment)
	}
	for k, want := range map[string]string{"component": "coordinator", "batch_id": "batch_abc", "model": "gemma-3-4b-it", "project": "proj_9"} {
		if ev.Tags[k] != want {
			t.Errorf("tag %s = %q, want %q", k, ev.Tags[k], want)
		}
	}
	if got := ev.Contexts["batch"]["requests"]; got != float64(5000) {
		t.Errorf("batch context requests = %v", got)
	}
	if got := ev.Contexts["extra"]["chunk"]; got != float64(3) {
		t.Errorf("extra chunk = %v", got)
	}
	if ev.User["id"] != "key_123" || ev.User["email"] != nil || ev.User["ip_address"] != nil {
		t.Errorf("user = %v", ev.User)
	}
	if len(ev.Exception) == 0 || !strings.Contains(ev.Exception[len(ev.Exception)-1].Value, "chunk 3: engine died") {
		t.Errorf("exception = %+v", ev.Exception)
	}
	if msg := findItem(t, events, "batch slow"); msg.Level != "warning" || msg.Tags["batch_id"] != "batch_abc" {
		t.Errorf("message event = %+v", msg)
	}

	ClearContext(ctx)
	CaptureMessage(ctx, "after clear", sentry.LevelInfo, nil)
	events = f.WaitItems("event", 3)
	if last := findItem(t, events, "after clear"); last.Tags["batch_id"] != "" || last.User["id"] != nil {
		t.Errorf("ClearContext left %v / %v", last.Tags, last.User)
	}
	if sentry.CurrentHub().Scope() != nil {
		probe := sentry.NewEvent()
		sentry.CurrentHub().Scope().ApplyToEvent(probe, nil, nil)
		if probe.Tags["batch_id"] != "" || probe.User.ID != "" {
			t.Errorf("process scope was changed: %v %v", probe.Tags, probe.User)
		}
	}
}

// findItem returns the one item whose message or exception mentions text;
// arrival order is not guaranteed.
func findItem(t *testing.T, items []sentrytest.Item, text string) sentrytest.Item {
	t.Helper()
	var found []sentrytest.Item
	for _, it := range items {
		if strings.Contains(fmt.Sprint(it.Message, it.Exception), text) {
			found = append(found, it)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d items mention %q, want 1: %+v", len(found), text, items)
	}
	return found[0]
}

// statusErr is an error answered with an HTTP status.
type statusErr int

func (s statusErr) Error() string   { return "status " + strconv.Itoa(int(s)) }
func (s statusErr) HTTPStatus() int { return int(s) }

func TestClientErrorsDropped(t *testing.T) {
	f := startSentry(t, nil)
	ctx := context.Background()
	CaptureException(ctx, statusErr(404), nil)
	CaptureException(ctx, fmt.Errorf("lookup: %w", connect.NewError(connect.CodeInvalidArgument, errors.New("bad"))), nil)
	CaptureMessage(ctx, "quota", sentry.LevelError, map[string]any{"status_code": 429})
	CaptureException(ctx, statusErr(503), nil)
	events := f.WaitItems("event", 1)
	if len(events) != 1 || events[0].Tags[TagStatusCode] != "503" {
		t.Fatalf("want only the 503 event, got %+v", events)
	}
}

func TestSecretsScrubbed(t *testing.T) {
	f := startSentry(t, nil)
	// The secrets are built at run time: stack frames carry source lines,
	// and a literal here would reach Sentry through them.
	secret := func(prefix string) string { return prefix + strings.Repeat("Xy9", 10) }
	key, skKey, plain, nestedSecret, cookie, query := secret("vb-"), secret("sk-proj-"), secret("plain"), secret("s3"), secret("sess"), secret("q")
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/files", func(w http.ResponseWriter, r *http.Request) {
		CaptureMessage(r.Context(), "auth failed for Bearer "+key, sentry.LevelError, map[string]any{
			"api_key": plain,
			"note":    "used " + key,
			"nested":  map[string]any{"client_secret": nestedSecret, "ok": "fine"},
		})
		CaptureException(r.Context(), errors.New("upstream said: Authorization: Bearer "+skKey), nil)
	})
	req := httptest.NewRequest("POST", "/v1/files?api_key="+query+"&limit=2", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("X-Api-Key", key)
	req.Header.Set("Cookie", "session="+cookie)
	SentryHTTP(mux).ServeHTTP(httptest.NewRecorder(), req)

	events := f.WaitItems("event", 2)
	if len(events) != 2 {
		t.Fatalf("got %d events, want 2", len(events))
	}
	raw := f.Raw()
	for _, secret := range []string{key, plain, nestedSecret, skKey, cookie, query} {
		if strings.Contains(raw, secret) {
			t.Errorf("secret %q reached sentry", secret)
		}
	}
	msg := findItem(t, events, "auth failed")
	if !strings.Contains(msg.Message, "Bearer [Filtered]") {
		t.Errorf("message = %q", msg.Message)
	}
	if nested, _ := msg.Contexts["extra"]["nested"].(map[string]any); nested["ok"] != "fine" {
		t.Errorf("scrubbing removed a harmless value: %v", msg.Contexts["extra"])
	}
}

func TestSentryHTTPPanicAndTransaction(t *testing.T) {
	f := startSentry(t, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/batches/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "boom" {
			panic("handler exploded")
		}
		w.WriteHeader(http.StatusTeapot)
	})
	// outer plays the API's recoverer: it answers the re-panicked request.
	outer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if rec := recover(); rec != nil {
					w.WriteHeader(http.StatusInternalServerError)
				}
			}()
			next.ServeHTTP(w, r)
		})
	}
	h := outer(SentryHTTP(mux))
	for id, want := range map[string]int{"boom": 500, "ok": 418} {
		req := httptest.NewRequest("GET", "/v1/batches/"+id, nil)
		req.Header.Set("X-Request-ID", "req_"+id)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("%s: status %d, want %d", id, rec.Code, want)
		}
	}

	events := f.WaitItems("event", 1)
	if len(events) != 1 {
		t.Fatalf("got %d events, want the panic only: %+v", len(events), events)
	}
	if ev := events[0]; ev.Tags[TagRequestID] != "req_boom" || ev.Level != "fatal" ||
		!strings.Contains(fmt.Sprint(ev.Message, ev.Exception), "handler exploded") {
		t.Errorf("panic event = %+v", ev)
	}
	txs := f.Items("transaction")
	if len(txs) != 2 {
		t.Fatalf("got %d transactions, want 2", len(txs))
	}
	byID := map[string]sentrytest.Item{}
	for _, tx := range txs {
		byID[tx.Tags[TagRequestID]] = tx
		if tx.Transaction != "GET /v1/batches/{id}" {
			t.Errorf("transaction name %q, want the route", tx.Transaction)
		}
	}
	if got := byID["req_boom"].Contexts["trace"]["status"]; got != "internal_error" {
		t.Errorf("panic transaction status %v", got)
	}
	if got := byID["req_ok"].Tags[TagStatusCode]; got != "418" {
		t.Errorf("ok transaction status tag %q", got)
	}
}

func TestRequestScopesDoNotLeak(t *testing.T) {
	f := startSentry(t, map[string]string{EnvSentryTracesSampleRate: "0"})
	h := SentryHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := r.URL.Query().Get("n")
		ctx := SetUserContext(r.Context(), "user_"+n, "")
		ctx = SetBatchContext(ctx, "batch_"+n, "", 1)
		CaptureMessage(ctx, "req "+n, sentry.LevelError, nil)
	}))
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x?n="+strconv.Itoa(i), nil))
		}()
	}
	wg.Wait()
	// Flush can return with the last envelope still on its way under load:
	// wait for all of them, bounded.
	events := f.WaitItems("event", n)
	if len(events) != n {
		t.Fatalf("got %d events, want %d", len(events), n)
	}
	for _, ev := range events {
		i := strings.TrimPrefix(ev.Message, "req ")
		if ev.User["id"] != "user_"+i || ev.Tags["batch_id"] != "batch_"+i {
			t.Errorf("event %q carries user %v batch %q", ev.Message, ev.User["id"], ev.Tags["batch_id"])
		}
	}
	if len(f.Items("transaction")) != 0 {
		t.Error("transactions sent at sample rate 0")
	}
}

func TestSentryInterceptor(t *testing.T) {
	f := startSentry(t, nil)
	unary := SentryInterceptor().WrapUnary(func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		switch req.Any().(*string) {
		case nil:
			panic("rpc exploded")
		default:
			switch *req.Any().(*string) {
			case "internal":
				return nil, connect.NewError(connect.CodeInternal, errors.New("raft apply failed"))
			case "notfound":
				return nil, connect.NewError(connect.CodeNotFound, errors.New("no such lease"))
			}
		}
		return connect.NewResponse(new(string)), nil
	})
	for _, in := range []string{"internal", "notfound", "fine"} {
		s := in
		_, _ = unary(context.Background(), connect.NewRequest(&s))
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic was swallowed, want it re-raised")
			}
		}()
		_, _ = unary(context.Background(), connect.NewRequest[string](nil))
	}()

	events := f.WaitItems("event", 2)
	if len(events) != 2 {
		t.Fatalf("got %d events, want internal error and panic: %+v", len(events), events)
	}
	if ev := findItem(t, events, "raft apply failed"); ev.Tags["rpc.code"] != "internal" {
		t.Errorf("error event = %+v", ev)
	}
	if ev := findItem(t, events, "rpc exploded"); ev.Level != "fatal" {
		t.Errorf("panic event = %+v", ev)
	}
	if txs := f.Items("transaction"); len(txs) != 4 {
		t.Errorf("got %d transactions, want 4", len(txs))
	}
}
