package agent

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vbatch/vbatch/agent/engine"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// scriptEngine is an engine whose Do and Healthy are test functions.
type scriptEngine struct {
	fakeEngine
	calls   atomic.Int64
	doFn    func(call int64, body []byte) (int, []byte, error)
	healthy func() bool
}

func (e *scriptEngine) Do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	n := e.calls.Add(1)
	return e.doFn(n, body)
}

func (e *scriptEngine) Healthy() bool {
	if e.healthy == nil {
		return true
	}
	return e.healthy()
}

var _ engine.Engine = (*scriptEngine)(nil)

// testRunner returns a runner with fast retries and deterministic ids.
func testRunner(eng engine.Engine, retryMax int) *runner {
	cfg := DefaultConfig()
	cfg.RetryMax = retryMax
	cfg.RetryBackoff = time.Millisecond
	cfg.RetryBackoffMax = 2 * time.Millisecond
	r := newRunner(cfg, eng, newMetrics(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	var mu sync.Mutex
	n := 0
	r.newID = func(prefix string) string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("%s%d", prefix, n)
	}
	r.healthPoll = time.Millisecond
	return r
}

const chatLine = `{"custom_id":"c1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"<b>hi</b> & ünïcode"}]}}`

func TestLineFormatsGolden(t *testing.T) {
	cases := []struct {
		name   string
		line   string
		status int
		body   string
		err    error
	}{
		{"success", chatLine, 200, "{\n  \"id\": \"chatcmpl-1\",\n  \"choices\": [{\"message\": {\"content\": \"<b>ok</b> & ünïcode\"}}],\n  \"usage\": {\"prompt_tokens\": 4, \"completion_tokens\": 2, \"total_tokens\": 6}\n}\n", nil},
		{"client error json", chatLine, 400, `{"error":{"message":"context too long","type":"invalid_request_error"}}`, nil},
		{"client error text", chatLine, 404, "not found\n", nil},
		{"server error", chatLine, 503, `{"error":"overloaded"}`, nil},
		{"connection error", chatLine, 0, "", errors.New("dial tcp 127.0.0.1:8000: connect: connection refused")},
		{"invalid input", `{"custom_id":"c2","method":"POST","body":{}}`, 0, "", nil},
	}
	var got bytes.Buffer
	for _, tc := range cases {
		eng := &scriptEngine{doFn: func(int64, []byte) (int, []byte, error) { return tc.status, []byte(tc.body), tc.err }}
		r := testRunner(eng, 1)
		res, err := r.run(context.Background(), 0, []byte(tc.line), lineMode{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (res.output == nil) == (res.errLine == nil) {
			t.Fatalf("%s: want exactly one of output and error line: %q %q", tc.name, res.output, res.errLine)
		}
		file := "output"
		line := res.output
		if res.errLine != nil {
			file, line = "errors", res.errLine
		}
		fmt.Fprintf(&got, "# %s -> %s\n%s", tc.name, file, line)
	}
	golden := filepath.Join("testdata", "lines.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("lines differ from %s:\ngot:\n%s\nwant:\n%s", golden, got.Bytes(), want)
	}
}

func TestRetryRules(t *testing.T) {
	const retryMax = 3
	for _, tc := range []struct {
		status int
		calls  int64
	}{
		{200, 1}, {201, 1}, {400, 1}, {401, 1}, {404, 1}, {422, 1},
		{429, retryMax + 1}, {500, retryMax + 1}, {502, retryMax + 1}, {503, retryMax + 1}, {504, retryMax + 1},
	} {
		eng := &scriptEngine{doFn: func(int64, []byte) (int, []byte, error) { return tc.status, []byte(`{}`), nil }}
		res, err := testRunner(eng, retryMax).run(context.Background(), 0, []byte(chatLine), lineMode{})
		if err != nil {
			t.Fatalf("status %d: %v", tc.status, err)
		}
		if got := eng.calls.Load(); got != tc.calls {
			t.Errorf("status %d: %d engine calls, want %d", tc.status, got, tc.calls)
		}
		if ok := tc.status < 300; ok != (res.output != nil) {
			t.Errorf("status %d: output %q, error %q", tc.status, res.output, res.errLine)
		}
	}
}

func TestRetryThenSuccess(t *testing.T) {
	eng := &scriptEngine{doFn: func(call int64, _ []byte) (int, []byte, error) {
		switch call {
		case 1:
			return 0, nil, errors.New("connection reset by peer")
		case 2:
			return 502, []byte("bad gateway"), nil
		}
		return 200, []byte(`{"usage":{"prompt_tokens":1,"completion_tokens":2}}`), nil
	}}
	res, err := testRunner(eng, 3).run(context.Background(), 0, []byte(chatLine), lineMode{})
	if err != nil || res.output == nil || eng.calls.Load() != 3 {
		t.Fatalf("err %v, output %q, calls %d", err, res.output, eng.calls.Load())
	}
	if res.usage.InputTokens != 1 || res.usage.OutputTokens != 2 || res.usage.TotalTokens != 3 {
		t.Errorf("usage %+v", res.usage)
	}
}

func TestBackoffBounded(t *testing.T) {
	base, maxWait := 200*time.Millisecond, 5*time.Second
	prev := time.Duration(0)
	for attempt := 0; attempt < 64; attempt++ {
		lo := backoffDelay(base, maxWait, attempt, 0)
		hi := backoffDelay(base, maxWait, attempt, 0.999999)
		if lo < base/2 || hi > maxWait || lo > hi {
			t.Fatalf("attempt %d: delay in [%s,%s], want within [%s,%s]", attempt, lo, hi, base/2, maxWait)
		}
		if hi < prev {
			t.Fatalf("attempt %d: delay %s shrank from %s", attempt, hi, prev)
		}
		prev = hi
	}
	if got := backoffDelay(base, maxWait, 0, 0.999999); got > base {
		t.Errorf("first retry waits up to %s, want at most %s", got, base)
	}
	if got := backoffDelay(base, maxWait, 63, 0); got != maxWait/2 {
		t.Errorf("late retry waits at least %s, want %s", got, maxWait/2)
	}
}

func TestCancelStopsRetries(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	eng := &scriptEngine{doFn: func(int64, []byte) (int, []byte, error) {
		cancel()
		return 503, nil, nil
	}}
	r := testRunner(eng, 10)
	r.backoff, r.backoffMax = time.Hour, time.Hour
	start := time.Now()
	_, err := r.run(ctx, 0, []byte(chatLine), lineMode{})
	if !errors.Is(err, errAbandoned) {
		t.Fatalf("err %v, want errAbandoned", err)
	}
	if eng.calls.Load() != 1 || time.Since(start) > 10*time.Second {
		t.Errorf("%d calls in %s after cancel", eng.calls.Load(), time.Since(start))
	}

	// A cancel during the back-off wait also ends the line.
	ctx, cancel = context.WithCancel(context.Background())
	eng = &scriptEngine{doFn: func(int64, []byte) (int, []byte, error) { return 500, nil, nil }}
	r = testRunner(eng, 10)
	r.backoff, r.backoffMax = time.Hour, time.Hour
	done := make(chan error, 1)
	go func() { _, err := r.run(ctx, 0, []byte(chatLine), lineMode{}); done <- err }()
	waitFor(t, "first call", func() bool { return eng.calls.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, errAbandoned) || eng.calls.Load() != 1 {
		t.Errorf("err %v after %d calls", err, eng.calls.Load())
	}
}

// TestUnhealthyEngineGetsNoRequest: a line waits while the engine reports
// itself unhealthy (restarting) and is sent once it is back, spending no
// retry.
func TestUnhealthyEngineGetsNoRequest(t *testing.T) {
	var healthChecks atomic.Int64
	eng := &scriptEngine{
		doFn: func(int64, []byte) (int, []byte, error) { return http.StatusOK, []byte(`{}`), nil },
		// Unhealthy for the first few looks, as an engine restarting.
		healthy: func() bool { return healthChecks.Add(1) > 5 },
	}
	r := testRunner(eng, 0)
	r.healthPoll = time.Millisecond
	res, err := r.run(context.Background(), 0, []byte(chatLine), lineMode{})
	if err != nil || res.output == nil {
		t.Fatalf("err %v, output %q, error line %q", err, res.output, res.errLine)
	}
	if n := eng.calls.Load(); n != 1 || healthChecks.Load() < 6 {
		t.Fatalf("%d engine calls after %d health looks, want 1 after the engine came back", n, healthChecks.Load())
	}
}

// crashEngine dies under its first request: the request loses its
// connection and the engine reports itself unhealthy from then on, until
// revive.
type crashEngine struct {
	scriptEngine
	down atomic.Bool
}

func newCrashEngine() *crashEngine {
	e := &crashEngine{}
	e.doFn = func(int64, []byte) (int, []byte, error) {
		e.down.Store(true)
		return 0, nil, errors.New("read: connection reset by peer")
	}
	e.healthy = func() bool { return !e.down.Load() }
	return e
}

// TestCrashUnderRequest: a request the engine dies under has no result
// (errEngineCrashed, for the lease to report) and spends no retry; alone
// at one crash short of the limit it becomes an engine_crashed error line;
// at the limit it is not sent at all.
func TestCrashUnderRequest(t *testing.T) {
	eng := newCrashEngine()
	r := testRunner(eng, 3)
	res, err := r.run(context.Background(), 4, []byte(chatLine), lineMode{})
	if !errors.Is(err, errEngineCrashed) || res.output != nil || res.errLine != nil {
		t.Fatalf("crash: err %v, output %q, error line %q", err, res.output, res.errLine)
	}
	if n := eng.calls.Load(); n != 1 {
		t.Fatalf("%d calls for a request the engine died under, want 1", n)
	}
	if got := counter(t, r.metrics.EngineCrashes); got != 1 {
		t.Fatalf("engine crashes counted %v, want 1", got)
	}

	eng = newCrashEngine()
	r = testRunner(eng, 3)
	res, err = r.run(context.Background(), 4, []byte(chatLine), lineMode{alone: true, failOnCrash: true, headCrashes: 1})
	if err != nil || res.errLine == nil || !strings.Contains(string(res.errLine), `"code":"engine_crashed"`) || !strings.Contains(string(res.errLine), "each of the 2 times") {
		t.Fatalf("crash alone at the limit: err %v, error line %q", err, res.errLine)
	}

	eng = newCrashEngine()
	r = testRunner(eng, 3)
	res, err = r.run(context.Background(), 4, []byte(chatLine), lineMode{alone: true, failNow: true, headCrashes: 2})
	if err != nil || res.errLine == nil || eng.calls.Load() != 0 || !strings.Contains(string(res.errLine), `"code":"engine_crashed"`) {
		t.Fatalf("past the limit: err %v, %d calls, error line %q", err, eng.calls.Load(), res.errLine)
	}
	if got := counter(t, r.metrics.CrashingRequests); got != 1 {
		t.Fatalf("crashing requests counted %v, want 1", got)
	}
}

// TestAloneRequestRunsAlone: a request run alone never overlaps another
// batch request of the runner, while shared ones overlap each other.
func TestAloneRequestRunsAlone(t *testing.T) {
	var running, aloneRunning, mostShared atomic.Int64
	var overlaps atomic.Int64
	eng := &scriptEngine{doFn: func(_ int64, body []byte) (int, []byte, error) {
		alone := strings.Contains(string(body), "alone-model")
		n := running.Add(1)
		if alone {
			aloneRunning.Add(1)
			if n != 1 {
				overlaps.Add(1)
			}
		} else if aloneRunning.Load() > 0 {
			overlaps.Add(1)
		}
		if m := mostShared.Load(); !alone && n > m {
			mostShared.CompareAndSwap(m, n)
		}
		time.Sleep(2 * time.Millisecond)
		if alone {
			aloneRunning.Add(-1)
		}
		running.Add(-1)
		return http.StatusOK, []byte(`{}`), nil
	}}
	r := testRunner(eng, 0)
	aloneLine := strings.Replace(chatLine, `"model":"m"`, `"model":"alone-model"`, 1)
	if aloneLine == chatLine {
		t.Fatal("test line has no model to replace")
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			line, mode := chatLine, lineMode{}
			if i%8 == 3 {
				line, mode = aloneLine, lineMode{alone: true}
			}
			if _, err := r.run(context.Background(), int64(i), []byte(line), mode); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("%d times a request ran beside an alone one", n)
	}
	if eng.calls.Load() != 40 {
		t.Fatalf("%d calls, want 40", eng.calls.Load())
	}
	if mostShared.Load() < 2 {
		t.Fatalf("shared requests never overlapped: the test proved nothing")
	}
}

func TestParseUsage(t *testing.T) {
	for _, tc := range []struct {
		body                              string
		in, out, total, cached, reasoning int64
	}{
		{`{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}`, 10, 5, 15, 4, 2},
		{`{"usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10,"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":1}}}`, 7, 3, 10, 1, 1},
		{`{"object":"list","usage":{"prompt_tokens":9,"total_tokens":9}}`, 9, 0, 9, 0, 0},
		{`{"usage":{"prompt_tokens":2,"completion_tokens":3}}`, 2, 3, 5, 0, 0},
		{`{"id":"x"}`, 0, 0, 0, 0, 0},
		{`not json`, 0, 0, 0, 0, 0},
	} {
		u := parseUsage([]byte(tc.body))
		if u.InputTokens != tc.in || u.OutputTokens != tc.out || u.TotalTokens != tc.total || u.CachedTokens != tc.cached || u.ReasoningTokens != tc.reasoning {
			t.Errorf("%s: usage %+v", tc.body, u)
		}
	}
}

// hangEngine never answers: each call waits for its context.
type hangEngine struct{ scriptEngine }

func (e *hangEngine) Do(ctx context.Context, path string, body []byte) (int, []byte, error) {
	e.calls.Add(1)
	<-ctx.Done()
	return 0, nil, fmt.Errorf("post %s: %w", path, ctx.Err())
}

// TestTimedOutRequestIsNotRetried: a request that uses its whole timeout
// on a healthy engine becomes an error line at once instead of holding its
// chunk back for retryMax more timeouts.
func TestTimedOutRequestIsNotRetried(t *testing.T) {
	eng := &hangEngine{}
	r := testRunner(eng, 3)
	r.timeout = 20 * time.Millisecond
	res, err := r.run(context.Background(), 0, []byte(chatLine), lineMode{})
	if err != nil || res.errLine == nil || res.output != nil {
		t.Fatalf("err %v, output %q, error line %q", err, res.output, res.errLine)
	}
	if n := eng.calls.Load(); n != 1 {
		t.Fatalf("%d engine calls for a request that timed out, want 1", n)
	}
	if !strings.Contains(string(res.errLine), "timed out") {
		t.Fatalf("error line %s", res.errLine)
	}
}

// TestAloneLineNotBlamedForAnotherCrash: an alone line that waited for the
// lock while another request crashed the engine is not sent to the dead
// engine (nor blamed for it): it waits for the engine and then runs.
func TestAloneLineNotBlamedForAnotherCrash(t *testing.T) {
	var down atomic.Bool
	crash := make(chan struct{})
	eng := &scriptEngine{
		doFn: func(_ int64, body []byte) (int, []byte, error) {
			if strings.Contains(string(body), "poison-model") {
				<-crash
				down.Store(true)
				return 0, nil, errors.New("read: connection reset by peer")
			}
			if down.Load() {
				return 0, nil, &url.Error{Op: "Post", URL: "http://127.0.0.1:1", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
			}
			return http.StatusOK, []byte(`{}`), nil
		},
		healthy: func() bool { return !down.Load() },
	}
	r := testRunner(eng, 3)
	r.healthPoll = time.Millisecond
	poisonLine := strings.Replace(chatLine, `"model":"m"`, `"model":"poison-model"`, 1)
	poisonErr := make(chan error, 1)
	go func() {
		_, err := r.run(context.Background(), 1, []byte(poisonLine), lineMode{})
		poisonErr <- err
	}()
	waitFor(t, "the poison request on the engine", func() bool { return eng.calls.Load() == 1 })
	aloneDone := make(chan lineResult, 1)
	go func() {
		res, err := r.run(context.Background(), 2, []byte(chatLine), lineMode{alone: true, failOnCrash: true, headCrashes: 1})
		if err != nil {
			t.Error(err)
		}
		aloneDone <- res
	}()
	// The alone line waits for the lock behind the poison request.
	time.Sleep(20 * time.Millisecond)
	close(crash)
	if err := <-poisonErr; !errors.Is(err, errEngineCrashed) {
		t.Fatalf("poison request: %v, want errEngineCrashed", err)
	}
	select {
	case res := <-aloneDone:
		t.Fatalf("alone line finished on a dead engine: output %q, error line %q", res.output, res.errLine)
	case <-time.After(50 * time.Millisecond):
	}
	down.Store(false)
	res := <-aloneDone
	if res.output == nil || res.errLine != nil {
		t.Fatalf("alone line: output %q, error line %q; want an output", res.output, res.errLine)
	}
}

// TestDialFailureIsNotACrash: a request whose connection could not even be
// made, to an engine found down, waits for the engine instead of counting
// as a crash under it.
func TestDialFailureIsNotACrash(t *testing.T) {
	var calls atomic.Int64
	var down atomic.Bool
	eng := &scriptEngine{
		doFn: func(int64, []byte) (int, []byte, error) {
			if calls.Add(1) == 1 {
				down.Store(true)
				time.AfterFunc(20*time.Millisecond, func() { down.Store(false) })
				return 0, nil, &url.Error{Op: "Post", URL: "http://127.0.0.1:1", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
			}
			return http.StatusOK, []byte(`{}`), nil
		},
		healthy: func() bool { return !down.Load() },
	}
	r := testRunner(eng, 0)
	r.healthPoll = time.Millisecond
	res, err := r.run(context.Background(), 0, []byte(chatLine), lineMode{alone: true, failOnCrash: true, headCrashes: 1})
	if err != nil || res.output == nil {
		t.Fatalf("err %v, output %q, error line %q", err, res.output, res.errLine)
	}
	if got := counter(t, r.metrics.EngineCrashes); got != 0 {
		t.Fatalf("a dial failure counted %v crashes", got)
	}
}
