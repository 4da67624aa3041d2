package api

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/vbatch/vbatch/fsm"
)

func TestUnknownRouteAndMethod(t *testing.T) {
	e := rootEnv(t)
	er := e.do(http.MethodGet, "/v1/nothing", testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
	if er["message"] != "Invalid URL (GET /v1/nothing)" {
		t.Fatalf("%v", er)
	}
	e.do(http.MethodGet, "/v1/files/", testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
	r := e.do(http.MethodPut, "/v1/files", testRoot, nil)
	r.wantError(t, 405, typeInvalidRequest, codeMethodNotAllowed)
	if r.header.Get("Allow") != "GET, POST" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	// 405 comes before authentication: the route exists whoever asks.
	e.do(http.MethodPatch, "/v1/batches/x", "", nil).wantError(t, 405, typeInvalidRequest, codeMethodNotAllowed)
}

func TestRequestID(t *testing.T) {
	e := rootEnv(t)
	r := e.do(http.MethodGet, "/v1/files", testRoot, nil, requestIDHeader, "my-trace-1")
	if r.header.Get(requestIDHeader) != "my-trace-1" {
		t.Fatalf("id %q", r.header.Get(requestIDHeader))
	}
	r = e.do(http.MethodGet, "/v1/files", testRoot, nil)
	r2 := e.do(http.MethodGet, "/v1/nothing", testRoot, nil)
	if id := r.header.Get(requestIDHeader); !strings.HasPrefix(id, "req_") || id == r2.header.Get(requestIDHeader) {
		t.Fatalf("generated ids %q %q", id, r2.header.Get(requestIDHeader))
	}
	r = e.do(http.MethodGet, "/v1/files", testRoot, nil, requestIDHeader, "bad id\twith tab")
	if strings.Contains(r.header.Get(requestIDHeader), "bad") {
		t.Fatalf("unsafe id kept: %q", r.header.Get(requestIDHeader))
	}
}

func TestPanicRecovered(t *testing.T) {
	var logs bytes.Buffer
	b := newFakeBackend()
	b.panicOnStatus = true
	a := New(b, Config{NoAuth: true}, slog.New(slog.NewTextHandler(&logs, nil)))
	e := &env{t: t, b: b, api: a}
	e.srv = newServer(t, a)
	e.do(http.MethodGet, "/v1/admin/cluster/status", "", nil).wantError(t, 500, typeServer, codeInternal)
	if !strings.Contains(logs.String(), "cluster status exploded") {
		t.Fatalf("panic not logged: %s", logs.String())
	}
	// The server still serves.
	if r := e.do(http.MethodGet, "/v1/files", "", nil); r.status != 200 {
		t.Fatalf("%d", r.status)
	}
}

func TestToAPIError(t *testing.T) {
	cases := []struct {
		err    error
		status int
		typ    string
		code   string
	}{
		{fmt.Errorf("x: %w", fsm.ErrNotFound), 404, typeInvalidRequest, codeNotFound},
		{fmt.Errorf("x: %w", fsm.ErrExists), 409, typeInvalidRequest, codeConflict},
		{fmt.Errorf("x: %w", fsm.ErrConflict), 409, typeInvalidRequest, codeConflict},
		{fmt.Errorf("x: %w", fsm.ErrStaleToken), 409, typeInvalidRequest, codeConflict},
		{fmt.Errorf("x: %w", fsm.ErrInvalid), 400, typeInvalidRequest, codeInvalidValue},
		{fmt.Errorf("x: %w", ErrUnavailable), 503, typeServer, codeUnavailable},
		{fmt.Errorf("x: %w", errUploadTooLarge), 413, typeInvalidRequest, codeFileTooLarge},
		{errors.New("disk"), 500, typeServer, codeInternal},
		{fmt.Errorf("wrapped: %w", badRequest("c", "p", "m")), 400, typeInvalidRequest, "c"},
	}
	for _, tc := range cases {
		ae := toAPIError(tc.err)
		if ae.status != tc.status || ae.typ != tc.typ || ae.code != tc.code || ae.message == "" {
			t.Errorf("%v -> %+v", tc.err, ae)
		}
	}
	if got := sentence(fsm.Reject(fsm.ErrConflict, "batch b is done")); got != "Conflict: batch b is done." {
		t.Errorf("sentence %q", got)
	}
}
