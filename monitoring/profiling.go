package monitoring

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/grafana/pyroscope-go"

	"github.com/vbatch/vbatch/internal/version"
)

// Environment variables for continuous profiling.
const (
	// EnvPyroscopeServerAddress is the Pyroscope server to push profiles to;
	// unset disables continuous profiling.
	EnvPyroscopeServerAddress = "PYROSCOPE_SERVER_ADDRESS"
	// EnvPyroscopeBasicAuthUser and EnvPyroscopeBasicAuthPassword
	// authenticate to a Pyroscope (or Grafana Cloud) that wants it.
	EnvPyroscopeBasicAuthUser     = "PYROSCOPE_BASIC_AUTH_USER"
	EnvPyroscopeBasicAuthPassword = "PYROSCOPE_BASIC_AUTH_PASSWORD"
)

// StartProfiling starts continuous profiling to the Pyroscope server named
// by PYROSCOPE_SERVER_ADDRESS, as application "vbatch.<component>" tagged
// with the host and version. Unset, it does nothing. The returned stop
// flushes and stops the profiler. Sentry-go has no profiler: this and the
// admin-only /debug/pprof/ are how vbatch is profiled.
func StartProfiling(component string, logger *slog.Logger) (stop func(), err error) {
	addr := os.Getenv(EnvPyroscopeServerAddress)
	if addr == "" {
		return func() {}, nil
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	host, _ := os.Hostname()
	p, err := pyroscope.Start(pyroscope.Config{
		ApplicationName:   "vbatch." + component,
		ServerAddress:     addr,
		BasicAuthUser:     os.Getenv(EnvPyroscopeBasicAuthUser),
		BasicAuthPassword: os.Getenv(EnvPyroscopeBasicAuthPassword),
		Tags:              map[string]string{"hostname": host, "version": version.Version},
		Logger:            pyroscopeLogger{logger},
		ProfileTypes: []pyroscope.ProfileType{
			pyroscope.ProfileCPU, pyroscope.ProfileAllocSpace, pyroscope.ProfileInuseSpace,
			pyroscope.ProfileGoroutines, pyroscope.ProfileMutexDuration, pyroscope.ProfileBlockDuration,
		},
	})
	if err != nil {
		return func() {}, fmt.Errorf("pyroscope %s: %w", addr, err)
	}
	logger.Info("continuous profiling enabled", "server", addr)
	return func() {
		if err := p.Stop(); err != nil {
			logger.Warn("pyroscope stop", "err", err)
		}
	}, nil
}

// pyroscopeLogger routes the profiler's printf logging to slog.
type pyroscopeLogger struct{ l *slog.Logger }

// Infof implements pyroscope.Logger; routine upload chatter goes to debug.
func (p pyroscopeLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "source", "pyroscope")
}

// Debugf implements pyroscope.Logger.
func (p pyroscopeLogger) Debugf(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "source", "pyroscope")
}

// Errorf implements pyroscope.Logger.
func (p pyroscopeLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "source", "pyroscope")
}
