package api

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// KeyLimits are the rate limit and quotas of an API key, as stored on the
// key (vbatchv1.KeyLimits). On a key, zero takes the deployment's default
// and a negative value is no limit; as a deployment default, zero or less
// is no limit.
type KeyLimits struct {
	// RequestsPerSecond is the sustained rate of API requests one
	// coordinator admits for the key: a token bucket holding twice that
	// (at least 1) for bursts. Over it, requests are answered 429
	// rate_limit_exceeded with Retry-After.
	RequestsPerSecond float64
	// MaxEnqueuedRequests caps the requests of the key's project that have
	// not finished in batches that have not ended; creating a batch that
	// would pass it is answered 429 insufficient_quota.
	MaxEnqueuedRequests int64
	// MaxFileBytes caps the bytes of all files of the key's project, batch
	// outputs included; an upload that would pass it is answered 429
	// insufficient_quota and stores nothing.
	MaxFileBytes int64
}

// Limits are a deployment's bounds on what clients may ask.
type Limits struct {
	// DefaultKeyLimits apply to the root key, to every request of a server
	// without authentication, and to each field a stored key leaves at
	// zero. The zero value limits nothing.
	DefaultKeyLimits KeyLimits
	// MaxTokens caps max_tokens, max_completion_tokens, max_output_tokens
	// and min_tokens of online requests (answered 400) and, unless
	// Config.Validate.MaxTokens is set, of batch input lines (validation
	// errors). Zero is no cap.
	MaxTokens int64
	// MaxN caps n and best_of the same way. Zero is no cap.
	MaxN int64
}

// keyLimitsFromProto reads a stored key's limits.
func keyLimitsFromProto(l *vbatchv1.KeyLimits) KeyLimits {
	return KeyLimits{
		RequestsPerSecond:   l.GetRequestsPerSecond(),
		MaxEnqueuedRequests: l.GetMaxEnqueuedRequests(),
		MaxFileBytes:        l.GetMaxFileBytes(),
	}
}

// effective combines a key's limits with the deployment's defaults. In the
// result, zero is no limit.
func (k KeyLimits) effective(def KeyLimits) KeyLimits {
	return KeyLimits{
		RequestsPerSecond:   pickLimit(k.RequestsPerSecond, def.RequestsPerSecond),
		MaxEnqueuedRequests: pickLimit(k.MaxEnqueuedRequests, def.MaxEnqueuedRequests),
		MaxFileBytes:        pickLimit(k.MaxFileBytes, def.MaxFileBytes),
	}
}

// pickLimit is one field of effective: a negative key value is no limit
// (0), a positive one stands, and zero takes the default.
func pickLimit[T int64 | float64](key, def T) T {
	switch {
	case key < 0:
		return 0
	case key > 0:
		return key
	}
	return max(def, 0)
}

// OpenAI's type and code of a 429.
const (
	typeRateLimit         = "requests"
	codeRateLimit         = "rate_limit_exceeded"
	typeInsufficientQuota = "insufficient_quota"
	codeInsufficientQuota = "insufficient_quota"
)

// rateLimited is the answer to a request over its key's rate; the caller
// sets Retry-After.
func rateLimited(rps float64, wait time.Duration) *apiError {
	return &apiError{status: http.StatusTooManyRequests, typ: typeRateLimit, code: codeRateLimit,
		message: fmt.Sprintf("Rate limit reached for requests: limit %s per second. Please try again in %s.",
			strconv.FormatFloat(rps, 'g', -1, 64), wait.Round(time.Millisecond))}
}

func quotaExceeded(format string, args ...any) *apiError {
	return &apiError{status: http.StatusTooManyRequests, typ: typeInsufficientQuota, code: codeInsufficientQuota,
		message: fmt.Sprintf(format, args...)}
}

// retryAfter is the whole number of seconds, at least 1, a client waits
// before its next token.
func retryAfter(wait time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(wait.Seconds()))), 10)
}

// bucket is a token bucket: it holds up to burst tokens, gains rate per
// second, and a request takes one.
type bucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

// take spends a token if there is one at now; otherwise it says how long
// until there is.
func (b *bucket) take(now time.Time) (bool, time.Duration) {
	// A clock that steps back refills nothing and keeps the later mark.
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}

// rateLimiter holds one bucket per key. A bucket idle long enough to be
// full again is dropped: a new full bucket is the same thing, so memory
// follows the keys in use, not every key ever seen.
type rateLimiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

// limiterSweep is how often idle buckets are dropped.
const limiterSweep = time.Minute

func newRateLimiter() *rateLimiter { return &rateLimiter{buckets: map[string]*bucket{}} }

// allow spends one of key's tokens at rate rps (burst twice that, at least
// 1); it reports how long to wait when none is left.
func (l *rateLimiter) allow(key string, rps float64, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) >= limiterSweep {
		for k, b := range l.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*b.rate >= b.burst {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	burst := max(1, 2*rps)
	b, ok := l.buckets[key]
	if !ok || b.rate != rps {
		b = &bucket{rate: rps, burst: burst, tokens: burst, last: now}
		l.buckets[key] = b
	}
	return b.take(now)
}

// rateLimit answers a request over its key's rate with 429 and
// Retry-After; nil lets it through.
func (a *API) rateLimit(w http.ResponseWriter, p *principal) *apiError {
	rps := p.limits.RequestsPerSecond
	if rps <= 0 {
		return nil
	}
	ok, wait := a.limiter.allow(p.keyID, rps, a.b.Now())
	if ok {
		return nil
	}
	w.Header().Set("Retry-After", retryAfter(wait))
	return rateLimited(rps, wait)
}

// projectLocks serialize, per project, the quota check and the commit of
// uploads and batch creations on this coordinator, so two concurrent
// requests cannot both fit in the same room. Coordinators do not share
// them: across coordinators the quota may be passed by what concurrent
// requests on other coordinators commit between check and commit.
type projectLocks [64]sync.Mutex

// lock takes project's lock and returns its release.
func (l *projectLocks) lock(project string) func() {
	m := l.mutex(project)
	m.Lock()
	return m.Unlock
}

// mutex is the lock project shares with the projects of its stripe.
func (l *projectLocks) mutex(project string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(project))
	return &l[h.Sum32()%uint32(len(l))]
}

// applyWithin commits cmd. With a check, it first runs check over the
// local state, holding project's quota lock until the commit is applied
// here, so that what the check saw includes every earlier commit of this
// coordinator; a failing check is the error and nothing is committed.
func (a *API) applyWithin(ctx context.Context, project string, check func(s *fsm.State) error, cmd proto.Message) error {
	if check != nil {
		unlock := a.quotas.lock(project)
		defer unlock()
		var err error
		a.b.FSM().View(func(s *fsm.State) { err = check(s) })
		if err != nil {
			return err
		}
	}
	_, err := a.b.Apply(ctx, cmd)
	return err
}

// enqueuedRequests counts the requests of project that batches not yet
// ended still have to run: for a validating batch every line of its input
// file, for the others the requests neither completed nor failed.
func enqueuedRequests(s *fsm.State, project string) int64 {
	var n int64
	s.LiveBatches(func(b *vbatchv1.Batch) bool {
		if b.Project != project {
			return true
		}
		if b.Status == vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING {
			if f, ok := s.Files[b.InputFileId]; ok {
				n += f.Lines
			}
			return true
		}
		rc := b.GetRequestCounts()
		n += max(0, rc.GetTotal()-rc.GetCompleted()-rc.GetFailed())
		return true
	})
	return n
}

// projectFileBytes sums the bytes of project's files.
func projectFileBytes(s *fsm.State, project string) int64 {
	var n int64
	for _, f := range s.Files {
		if f.Project == project {
			n += f.Bytes
		}
	}
	return n
}

func fileQuotaExceeded(project string, used, size, limit int64) *apiError {
	return quotaExceeded("You exceeded your file storage quota: project %s holds %d bytes of files and this upload of %d bytes would pass its limit of %d bytes. Delete files you no longer need and retry.",
		project, used, size, limit)
}
