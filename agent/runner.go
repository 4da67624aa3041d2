package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/vbatch/vbatch/agent/engine"
	"github.com/vbatch/vbatch/internal/ids"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// errAbandoned means a line has no result because its context ended first
// (the lease was revoked or its drain timed out). Such a line must not be
// committed: the next lease of the chunk runs it again.
var errAbandoned = errors.New("line abandoned")

// errEngineCrashed means the engine died while the line's request was in
// flight: the line has no result, and the lease stops and reports the
// crash so that the coordinator can find a request that crashes it.
var errEngineCrashed = errors.New("engine crashed under the request")

// errEngineDown means a request was not sent: the engine was unhealthy by
// the time the request could go.
var errEngineDown = errors.New("engine unhealthy; request not sent")

// lineMode says how a line runs.
type lineMode struct {
	// alone runs the request with no other batch request of this agent on
	// the engine (an isolated line, see fsm.Isolation).
	alone bool
	// failOnCrash makes a crash under an alone request an error line
	// instead of errEngineCrashed: the line already crashed the engine
	// alone as often as the limit allows but once.
	failOnCrash bool
	// failNow renders the line an error line without running it: it
	// crashed the engine alone as often as the limit allows.
	failNow bool
	// headCrashes is how often the line crashed the engine alone before,
	// for the error line's message.
	headCrashes uint32
	// onEngine, when set, counts the line's requests that are on the
	// engine (sent, not yet answered): the lease tells an engine that went
	// down under its requests from one that was down before they went.
	onEngine *atomic.Int64
}

// lineResult is a finished line: exactly one of output and errLine is set.
type lineResult struct {
	line    int64
	output  []byte // a JSONL line for the output file
	errLine []byte // a JSONL line for the error file
	usage   *vbatchv1.Usage
	// crashedAlone marks a line without a result whose request ran alone
	// when the engine crashed.
	crashedAlone bool
}

// runner sends batch lines to the engine. Its slots bound the requests in
// flight across every chunk the agent holds; callers take a slot before
// run and give it back after.
type runner struct {
	eng   engine.Engine
	slots chan struct{}
	// exclusive is held shared by every batch and online request in
	// flight and alone by an isolated one, so that nothing else of this
	// agent runs beside it.
	exclusive  *engineLock
	retryMax   int
	backoff    time.Duration
	backoffMax time.Duration
	timeout    time.Duration
	// healthPoll is how often a line waiting for an unhealthy engine looks
	// again.
	healthPoll time.Duration
	metrics    *metrics
	log        *slog.Logger
	// newID makes the ids of output lines; tests replace it.
	newID func(prefix string) string
	// jitter returns a number in [0,1); tests replace it.
	jitter func() float64
}

func newRunner(cfg Config, eng engine.Engine, m *metrics, log *slog.Logger) *runner {
	return &runner{
		eng:        eng,
		slots:      make(chan struct{}, cfg.Concurrency),
		exclusive:  newEngineLock(),
		retryMax:   cfg.RetryMax,
		backoff:    cfg.RetryBackoff,
		backoffMax: cfg.RetryBackoffMax,
		timeout:    cfg.RequestTimeout,
		healthPoll: 250 * time.Millisecond,
		metrics:    m,
		log:        log,
		newID:      ids.New,
		jitter:     rand.Float64,
	}
}

// release gives back a slot taken by sending on slots.
func (r *runner) release() { <-r.slots }

// retryableStatus reports whether an engine status is worth retrying:
// server errors, and 429 (an upstream engine shedding load).
func retryableStatus(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests
}

// backoffDelay is the wait before retry number attempt (0-based): base
// doubled per attempt, capped at max, with equal jitter so the wait lies in
// [d/2, d]. jitter is in [0,1).
func backoffDelay(base, max time.Duration, attempt int, jitter float64) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + time.Duration(jitter*float64(d/2))
}

// run sends one input line to the engine and renders its result line. It
// sends nothing while the engine reports itself unhealthy: the line waits
// for it (the lease gives up on an engine that stays down,
// EngineFailureTimeout). A connection error after which the engine is
// unhealthy is a crash under the request: errEngineCrashed, or an error
// line when mode.failOnCrash. Other connection errors and retryable
// statuses are retried up to retryMax times; a request that runs out its
// timeout on a healthy engine becomes an error line at once. It returns
// errAbandoned once ctx ends.
func (r *runner) run(ctx context.Context, lineNo int64, raw []byte, mode lineMode) (lineResult, error) {
	res := lineResult{line: lineNo}
	in, err := parseInputLine(raw)
	if err != nil {
		var cid *string
		if in.CustomID != "" {
			cid = &in.CustomID
		}
		res.errLine, err = encodeLine(outputLine{ID: r.newID("batch_req_"), CustomID: cid, Error: &outputError{Code: errCodeInvalidRequest, Message: err.Error()}})
		return res, err
	}
	if mode.failNow {
		r.metrics.CrashingRequests.Inc()
		return r.failCode(res, in, errCodeEngineCrashed, fmt.Sprintf("the engine crashed each of the %d times it ran this request alone; not run again", mode.headCrashes))
	}
	for attempt := 0; ; {
		if !r.waitHealthy(ctx) {
			return res, errAbandoned
		}
		status, body, err := r.do(ctx, in, mode)
		if ctx.Err() != nil {
			return res, errAbandoned
		}
		if err == nil && !retryableStatus(status) {
			return r.finish(res, in, status, body)
		}
		if err != nil && (errors.Is(err, errEngineDown) || notSent(err)) && !r.eng.Healthy() {
			// The engine went down before this request reached it: wait
			// for it again; the request is not to blame.
			continue
		}
		if err != nil && !r.eng.Healthy() {
			r.metrics.EngineCrashes.Inc()
			if mode.alone && mode.failOnCrash {
				r.metrics.CrashingRequests.Inc()
				r.log.Warn("request crashed the engine alone again; failing it", "custom_id", in.CustomID, "line", lineNo, "crashes", mode.headCrashes+1)
				return r.failCode(res, in, errCodeEngineCrashed, fmt.Sprintf("the engine crashed each of the %d times it ran this request alone; not run again", mode.headCrashes+1))
			}
			r.log.Warn("engine crashed under a request", "custom_id", in.CustomID, "line", lineNo, "alone", mode.alone, "err", err)
			return res, errEngineCrashed
		}
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			// The request used its whole timeout on a healthy engine: a retry
			// would most likely spend it again, holding back every later
			// line of the chunk (parts commit in order) for as long.
			return r.fail(res, in, fmt.Sprintf("engine request timed out after %s; not retried", r.timeout))
		}
		if attempt >= r.retryMax {
			if err != nil {
				return r.fail(res, in, fmt.Sprintf("engine request failed after %d attempts: %v", attempt+1, err))
			}
			return r.finish(res, in, status, body)
		}
		r.log.Debug("retrying engine request", "custom_id", in.CustomID, "attempt", attempt+1, "status", status, "err", err)
		t := time.NewTimer(backoffDelay(r.backoff, r.backoffMax, attempt, r.jitter()))
		select {
		case <-ctx.Done():
			t.Stop()
			return res, errAbandoned
		case <-t.C:
		}
		attempt++
	}
}

// do makes one engine call, alone on the engine or beside others, and
// records its metrics. It sends nothing (errEngineDown) if the engine is
// unhealthy once its turn comes: waiting for the lock may have outlasted
// the engine. Waiting for the lock ends with ctx (a revoked lease, a
// drain that timed out), with ctx's error.
func (r *runner) do(ctx context.Context, in inputLine, mode lineMode) (int, []byte, error) {
	if mode.alone {
		if err := r.exclusive.lock(ctx); err != nil {
			return 0, nil, err
		}
		defer r.exclusive.unlock()
	} else {
		if err := r.exclusive.lockShared(ctx); err != nil {
			return 0, nil, err
		}
		defer r.exclusive.unlockShared()
	}
	if !r.eng.Healthy() {
		return 0, nil, errEngineDown
	}
	if mode.onEngine != nil {
		mode.onEngine.Add(1)
		defer mode.onEngine.Add(-1)
	}
	actx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	start := time.Now()
	status, body, err := r.eng.Do(actx, in.URL, in.Body)
	if ctx.Err() != nil {
		return 0, nil, ctx.Err()
	}
	code := strconv.Itoa(status)
	if err != nil {
		code = "error"
		err = fmt.Errorf("engine %s: %w", in.URL, err)
	}
	r.metrics.observeRequest(code, time.Since(start))
	return status, body, err
}

// notSent reports whether err says the request never reached the engine
// (its connection could not be made), which says nothing about the request.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// waitHealthy waits until the engine is healthy; false when ctx ended.
func (r *runner) waitHealthy(ctx context.Context) bool {
	t := time.NewTicker(r.healthPoll)
	defer t.Stop()
	for !r.eng.Healthy() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// finish renders an engine response: 2xx into the output file with its
// usage, any other status into the error file, as OpenAI does.
func (r *runner) finish(res lineResult, in inputLine, status int, body []byte) (lineResult, error) {
	line := outputLine{
		ID:       r.newID("batch_req_"),
		CustomID: &in.CustomID,
		Response: &outputResponse{StatusCode: status, RequestID: r.newID("req_"), Body: responseBody(body)},
	}
	b, err := encodeLine(line)
	if err != nil {
		return res, err
	}
	if status >= 200 && status < 300 {
		res.output = b
		res.usage = parseUsage(body)
		r.metrics.TokensGenerated.Add(float64(res.usage.OutputTokens))
	} else {
		res.errLine = b
	}
	return res, nil
}

// fail renders a request that got no response.
func (r *runner) fail(res lineResult, in inputLine, msg string) (lineResult, error) {
	return r.failCode(res, in, errCodeEngineUnavailable, msg)
}

// failCode renders a request without a response as an error line with
// code.
func (r *runner) failCode(res lineResult, in inputLine, code, msg string) (lineResult, error) {
	b, err := encodeLine(outputLine{
		ID:       r.newID("batch_req_"),
		CustomID: &in.CustomID,
		Error:    &outputError{Code: code, Message: msg},
	})
	res.errLine = b
	return res, err
}
