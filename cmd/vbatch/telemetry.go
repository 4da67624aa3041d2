package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/vbatch/vbatch/internal/version"
	"github.com/vbatch/vbatch/monitoring"
)

// logFlags are the logging flags shared by coordinator and agent.
type logFlags struct {
	level    string
	file     string
	maxBytes int64
	keep     int
}

// setupLogging returns the component's JSON logger and the writer under
// it, for libraries with their own loggers (raft): stdout (journald) by
// default, or the rotated file of --log-file, reopened on SIGHUP for an
// outside logrotate. close releases the file.
func setupLogging(lf logFlags, component string) (*slog.Logger, io.Writer, func(), error) {
	if lf.file == "" {
		return monitoring.NewLogger(os.Stdout, lf.level, component), os.Stdout, func() {}, nil
	}
	w, err := monitoring.NewRotatingWriter(lf.file, lf.maxBytes, lf.keep)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--log-file: %w", err)
	}
	logger := monitoring.NewLogger(w, lf.level, component)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				if err := w.Reopen(); err != nil {
					fmt.Fprintf(os.Stderr, "reopen %s: %v\n", lf.file, err)
				}
			case <-done:
				return
			}
		}
	}()
	return logger, w, func() {
		signal.Stop(hup)
		close(done)
		_ = w.Close()
	}, nil
}

// setupTelemetry starts Sentry and, when configured, continuous profiling
// for component; stop flushes both. A failure to start either is logged,
// not fatal: monitoring must not keep the fleet down.
func setupTelemetry(component string, logger *slog.Logger) (stop func()) {
	stopSentry, err := monitoring.InitSentry(component, version.Version, logger)
	if err != nil {
		logger.Error("sentry not started", "err", err)
	}
	stopProfiling, err := monitoring.StartProfiling(component, logger)
	if err != nil {
		logger.Error("continuous profiling not started", "err", err)
	}
	return func() {
		stopProfiling()
		stopSentry()
	}
}

// addLogFlags registers the logging flags on a command.
func addLogFlags(f *pflag.FlagSet, lf *logFlags) {
	f.StringVar(&lf.level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&lf.file, "log-file", "", "write JSON logs to this file, rotated by size, instead of stdout (e.g. /var/log/vbatch/coordinator.log)")
	f.Int64Var(&lf.maxBytes, "log-max-bytes", monitoring.DefaultLogMaxBytes, "rotate --log-file at this size")
	f.IntVar(&lf.keep, "log-keep", monitoring.DefaultLogKeep, "rotated --log-file files to keep")
}
