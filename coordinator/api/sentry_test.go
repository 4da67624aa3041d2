package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/getsentry/sentry-go"

	"github.com/vbatch/vbatch/monitoring"
	"github.com/vbatch/vbatch/monitoring/sentrytest"
)

// sentryEnv serves the API behind monitoring.SentryHTTP, as the
// coordinator does, with Sentry pointed at a fake; logs go to the buffer.
func sentryEnv(t *testing.T, logs *bytes.Buffer) (*env, *sentrytest.Server) {
	t.Helper()
	fake := sentrytest.New(t)
	t.Setenv(monitoring.EnvSentryDSN, fake.DSN())
	t.Setenv(monitoring.EnvEnableSentry, "true")
	t.Setenv(monitoring.EnvSentryTracesSampleRate, "1")
	shutdown, err := monitoring.InitSentry("coordinator", "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		shutdown()
		sentry.CurrentHub().BindClient(nil)
	})
	b := newFakeBackend()
	a := New(b, Config{RootKey: testRoot}, monitoring.NewLogger(logs, "debug", "api"))
	srv := httptest.NewServer(monitoring.SentryHTTP(a.Handler()))
	t.Cleanup(srv.Close)
	return &env{t: t, b: b, api: a, srv: srv}, fake
}

func TestSentryCapturesServerErrorsOnly(t *testing.T) {
	var logs bytes.Buffer
	e, fake := sentryEnv(t, &logs)

	e.do(http.MethodGet, "/v1/files/file-nope", testRoot, nil, requestIDHeader, "req-404").wantError(t, 404, typeInvalidRequest, codeNotFound)
	e.do(http.MethodGet, "/v1/files", "wrong-key", nil, requestIDHeader, "req-401").wantError(t, 401, typeInvalidRequest, codeInvalidAPIKey)
	e.b.applyErr = errors.New("disk on fire")
	e.postJSON("/v1/admin/keys", testRoot, map[string]any{"scopes": []string{"read"}}).wantError(t, 500, typeServer, codeInternal)
	e.b.panicOnStatus = true
	e.do(http.MethodGet, "/v1/admin/cluster/status", testRoot, nil, requestIDHeader, "req-panic").wantError(t, 500, typeServer, codeInternal)

	// The panic is reported as the handler unwinds, which may be after
	// the client has its 500: wait for the events, bounded.
	events := waitItems(fake, "event", func(items []sentrytest.Item) bool { return len(items) >= 2 })
	if len(events) != 2 {
		t.Fatalf("got %d events, want the 500 and the panic once each: %+v", len(events), events)
	}
	var sawErr, sawPanic bool
	for _, ev := range events {
		text := ev.Message
		for _, x := range ev.Exception {
			text += " " + x.Value
		}
		switch {
		case strings.Contains(text, "disk on fire"):
			sawErr = true
			if ev.User["id"] != "root" || ev.Tags[monitoring.TagStatusCode] != "500" || !strings.HasPrefix(ev.Tags[monitoring.TagRequestID], "req_") {
				t.Errorf("500 event scope: user %v tags %v", ev.User, ev.Tags)
			}
		case strings.Contains(text, "cluster status exploded"):
			sawPanic = true
			if ev.Tags[monitoring.TagRequestID] != "req-panic" || ev.Level != "fatal" {
				t.Errorf("panic event: %+v", ev)
			}
		default:
			t.Errorf("unexpected event %+v", ev)
		}
	}
	if !sawErr || !sawPanic {
		t.Fatalf("missing events: error %v panic %v", sawErr, sawPanic)
	}

	names := map[string]string{}
	// Transactions finish as their handlers return: wait for the two the
	// assertions name.
	txs := waitItems(fake, "transaction", func(items []sentrytest.Item) bool {
		seen := map[string]bool{}
		for _, tx := range items {
			seen[tx.Tags[monitoring.TagRequestID]] = true
		}
		return seen["req-401"] && seen["req-panic"]
	})
	for _, tx := range txs {
		names[tx.Tags[monitoring.TagRequestID]] = tx.Transaction
	}
	// Sentry drops 404 transactions by default (TraceIgnoreStatusCodes).
	if _, ok := names["req-404"]; ok || names["req-401"] != "GET /v1/files" || names["req-panic"] != "GET /v1/admin/cluster/status" {
		t.Errorf("transaction names by request id: %v", names)
	}

	// The request log lines carry request_id.
	var found bool
	for _, line := range bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "request" && m["request_id"] == "req-404" && m["logger"] == "api" {
			found = true
		}
	}
	if !found {
		t.Errorf("no request log line with request_id req-404:\n%s", logs.String())
	}
}

func TestRequestIDOnContext(t *testing.T) {
	var got string
	a := New(newFakeBackend(), Config{NoAuth: true}, slog.New(slog.DiscardHandler))
	h := a.requestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = monitoring.RequestIDFrom(r.Context())
	}))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set(requestIDHeader, "abc-1")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got != "abc-1" {
		t.Fatalf("request id on context %q", got)
	}
}

// waitItems returns what reached the fake Sentry of type typ once done
// holds for it, or after five seconds: a panic's event and transaction are
// sent as the handler unwinds, which may be after the client has its 500.
func waitItems(fake *sentrytest.Server, typ string, done func([]sentrytest.Item) bool) []sentrytest.Item {
	items := fake.Items(typ)
	for deadline := time.Now().Add(5 * time.Second); !done(items) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		items = fake.Items(typ)
	}
	return items
}
