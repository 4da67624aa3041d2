package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func telemetryCall(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
	_, err := c.Telemetry(ctx, connect.NewRequest(&vbatchv1.TelemetryRequest{AgentId: "a"}))
	return err
}

func TestCoordClientFailsOver(t *testing.T) {
	live := newFakeCoord(t, nil)
	liveAddr := live.serve(t)
	dead := deadAddr(t)
	c := newCoordClient(func() []string { return []string{dead, liveAddr} }, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.retryMin, c.retryMax = time.Millisecond, 5*time.Millisecond
	// Whichever one it tries first, every call lands on the live one.
	callsLandOn(t, c, live, time.Second)
}

// callsLandOn makes five telemetry calls through c, each attempt bounded
// by attempt, and checks that all of them reached live.
func callsLandOn(t *testing.T, c *coordClient, live *fakeCoord, attempt time.Duration) {
	t.Helper()
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.call(ctx, "telemetry", attempt, telemetryCall)
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	live.with(func() {
		if len(live.telemetry) != 5 {
			t.Errorf("live coordinator got %d calls, want 5", len(live.telemetry))
		}
	})
}

func TestCoordClientWaitsForDiscovery(t *testing.T) {
	live := newFakeCoord(t, nil)
	liveAddr := live.serve(t)
	var known atomic.Bool
	c := newCoordClient(func() []string {
		if known.Load() {
			return []string{liveAddr}
		}
		return nil
	}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.retryMin, c.retryMax = time.Millisecond, 5*time.Millisecond
	done := make(chan error, 1)
	go func() { done <- c.call(context.Background(), "telemetry", time.Second, telemetryCall) }()
	time.AfterFunc(20*time.Millisecond, func() { known.Store(true) })
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("call did not find the coordinator once discovery knew it")
	}
}

func TestCoordClientDoesNotRetryRefusals(t *testing.T) {
	live := newFakeCoord(t, nil)
	c := newCoordClient(func() []string { return []string{live.serve(t)} }, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	err := c.call(context.Background(), "put results", time.Second, func(ctx context.Context, c vbatchv1connect.AgentServiceClient) error {
		_, err := c.PutResults(ctx, connect.NewRequest(&vbatchv1.PutResultsRequest{BatchId: fakeBatch, Token: 99}))
		return err
	})
	if !isStale(err) || connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("err %v, want a stale-token refusal", err)
	}
	live.with(func() {
		if live.putCalls != 1 {
			t.Errorf("%d calls, want 1", live.putCalls)
		}
	})
}

func TestCoordClientGivesUpWithContext(t *testing.T) {
	dead := deadAddr(t)
	c := newCoordClient(func() []string { return []string{dead} }, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.retryMin, c.retryMax = time.Millisecond, 5*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.call(ctx, "telemetry", time.Second, telemetryCall)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want deadline exceeded", err)
	}
}

func TestRetryableErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{connect.NewError(connect.CodeUnavailable, errors.New("no leader")), true},
		{connect.NewError(connect.CodeDeadlineExceeded, errors.New("slow")), true},
		{errNoCoordinators, true},
		{connect.NewError(connect.CodeFailedPrecondition, errors.New("stale fencing token")), false},
		{connect.NewError(connect.CodeNotFound, errors.New("agent not registered")), false},
		{connect.NewError(connect.CodeAborted, errors.New("conflict")), false},
		{connect.NewError(connect.CodeInvalidArgument, errors.New("bad")), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if !isStale(connect.NewError(connect.CodeAborted, errors.New("chunk x: stale fencing token"))) {
		t.Error("a message saying stale is a stale answer")
	}
}

// TestCoordClientLeavesAHungCoordinator: a coordinator that accepts calls
// and never answers (partitioned from its leader) costs one attempt's
// timeout, after which calls go to another: what keeps a lease renewed.
func TestCoordClientLeavesAHungCoordinator(t *testing.T) {
	live := newFakeCoord(t, nil)
	liveAddr := live.serve(t)
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // the server may not notice a client giving up
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(hung.Close)
	t.Cleanup(func() { close(release) }) // runs first
	hungAddr := strings.TrimPrefix(hung.URL, "http://")
	c := newCoordClient(func() []string { return []string{hungAddr, liveAddr} }, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.retryMin, c.retryMax = time.Millisecond, 5*time.Millisecond
	c.current = hungAddr // the one in use when it hung
	callsLandOn(t, c, live, 200*time.Millisecond)
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{connect.NewError(connect.CodeFailedPrecondition, errors.New("stale token")), true},
		{connect.NewError(connect.CodeNotFound, errors.New("no chunk")), true},
		{connect.NewError(connect.CodeInvalidArgument, errors.New("bad")), true},
		{connect.NewError(connect.CodeUnknown, io.ErrUnexpectedEOF), false}, // a coordinator died mid-stream
		{connect.NewError(connect.CodeUnavailable, errors.New("no leader")), false},
		{context.DeadlineExceeded, false},
	} {
		if got := refused(tc.err); got != tc.want {
			t.Errorf("refused(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
