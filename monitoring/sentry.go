package monitoring

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/getsentry/sentry-go"

	"github.com/vbatch/vbatch/internal/version"
)

// Environment variables that configure Sentry; see docs/monitoring.md.
const (
	EnvSentryDSN                = "SENTRY_DSN"
	EnvEnableSentry             = "ENABLE_SENTRY"
	EnvSentryTracesSampleRate   = "SENTRY_TRACES_SAMPLE_RATE"
	EnvSentryProfilesSampleRate = "SENTRY_PROFILES_SAMPLE_RATE"
	EnvSentryEnvironment        = "SENTRY_ENVIRONMENT"
)

// DefaultTracesSampleRate is the share of transactions sent when
// SENTRY_TRACES_SAMPLE_RATE is unset.
const DefaultTracesSampleRate = 0.1

// sentryFlushTimeout bounds how long shutdown waits for queued events.
const sentryFlushTimeout = 5 * time.Second

// SentryConfig is the Sentry setup read from the environment.
type SentryConfig struct {
	// DSN is where events go; empty disables Sentry.
	DSN string
	// Enabled is ENABLE_SENTRY, true by default when a DSN is set.
	Enabled bool
	// TracesSampleRate is the share of transactions sent, 0 to 1.
	TracesSampleRate float64
	// Environment names the deployment (production, staging…).
	Environment string
	// ProfilesRequested is true when SENTRY_PROFILES_SAMPLE_RATE was set:
	// sentry-go has no profiler, so it is only reported as unsupported.
	ProfilesRequested bool
}

// SentryConfigFromEnv reads the SENTRY_* and ENABLE_SENTRY variables.
func SentryConfigFromEnv(getenv func(string) string) (SentryConfig, error) {
	cfg := SentryConfig{
		DSN:              strings.TrimSpace(getenv(EnvSentryDSN)),
		TracesSampleRate: DefaultTracesSampleRate,
		Environment:      getenv(EnvSentryEnvironment),
	}
	cfg.Enabled = cfg.DSN != ""
	if v := strings.TrimSpace(getenv(EnvEnableSentry)); v != "" {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("%s=%q: %w", EnvEnableSentry, v, err)
		}
		cfg.Enabled = on && cfg.DSN != ""
	}
	if v := strings.TrimSpace(getenv(EnvSentryTracesSampleRate)); v != "" {
		rate, err := strconv.ParseFloat(v, 64)
		if err != nil || rate < 0 || rate > 1 {
			return cfg, fmt.Errorf("%s=%q: want a number from 0 to 1", EnvSentryTracesSampleRate, v)
		}
		cfg.TracesSampleRate = rate
	}
	cfg.ProfilesRequested = strings.TrimSpace(getenv(EnvSentryProfilesSampleRate)) != ""
	return cfg, nil
}

// InitSentry configures the process-wide Sentry client for component
// (coordinator, agent) from the environment. release defaults to the build
// version. With Sentry disabled it returns a no-op shutdown and nil. The
// returned shutdown flushes queued events; call it before exit.
//
// Only the client is process-wide: scopes (tags, user, batch) live on hubs
// cloned into each request's or batch's context, see SentryHTTP and
// SetBatchContext.
func InitSentry(component, release string, logger *slog.Logger) (shutdown func(), err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := SentryConfigFromEnv(os.Getenv)
	if err != nil {
		return func() {}, fmt.Errorf("sentry config: %w", err)
	}
	if cfg.ProfilesRequested {
		logger.Warn("SENTRY_PROFILES_SAMPLE_RATE is set but sentry-go has no profiler; use /debug/pprof/ or PYROSCOPE_SERVER_ADDRESS instead")
	}
	if !cfg.Enabled {
		logger.Debug("sentry disabled", "dsn_set", cfg.DSN != "")
		return func() {}, nil
	}
	if release == "" {
		release = version.Version
	}
	opts := sentryOptions(cfg, component, release)
	if err := sentry.Init(opts); err != nil {
		return func() {}, fmt.Errorf("sentry init: %w", err)
	}
	logger.Info("sentry enabled", "environment", cfg.Environment, "release", release,
		"traces_sample_rate", cfg.TracesSampleRate)
	return func() {
		if !sentry.Flush(sentryFlushTimeout) {
			logger.Warn("sentry flush timed out; some events were not sent")
		}
	}, nil
}

// sentryOptions builds the client options for cfg.
func sentryOptions(cfg SentryConfig, component, release string) sentry.ClientOptions {
	return sentry.ClientOptions{
		Dsn:                   cfg.DSN,
		Release:               release,
		Environment:           cfg.Environment,
		EnableTracing:         true,
		TracesSampleRate:      cfg.TracesSampleRate,
		SendDefaultPII:        false,
		AttachStacktrace:      true,
		Tags:                  map[string]string{"component": component},
		BeforeSend:            beforeSend,
		BeforeSendTransaction: beforeSendTransaction,
		BeforeBreadcrumb: func(b *sentry.Breadcrumb, _ *sentry.BreadcrumbHint) *sentry.Breadcrumb {
			scrubBreadcrumb(b)
			return b
		},
	}
}

// beforeSend drops expected client errors and scrubs secrets from the rest.
func beforeSend(event *sentry.Event, _ *sentry.EventHint) *sentry.Event {
	if expectedClientError(event) {
		return nil
	}
	scrubEvent(event)
	return event
}

// beforeSendTransaction scrubs secrets from a transaction; transactions
// answered 4xx are still sent, they are performance data.
func beforeSendTransaction(event *sentry.Event, _ *sentry.EventHint) *sentry.Event {
	scrubEvent(event)
	return event
}

// expectedClientError reports whether event stands for an HTTP 4xx: a
// client mistake, not a bug worth an alert.
func expectedClientError(event *sentry.Event) bool {
	if v, ok := event.Tags[TagStatusCode]; ok {
		if code, err := strconv.Atoi(v); err == nil && code >= 400 && code < 500 {
			return true
		}
	}
	return event.Tags[TagExpected] == "true"
}
