package monitoring

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// HCLog returns an hclog.Logger for hashicorp libraries (raft,
// raft-autopilot) that writes through logger, so their lines carry the same
// fields as every other vbatch line (time, level, msg, logger) instead of
// hclog's "@level"/"@message"/"@module", which the log pipeline does not
// read. name becomes the logger field ("raft"); empty keeps logger's own
// until the library calls Named. Named appends ".sub" as hclog does.
//
// Levels map onto slog's: Trace and Debug to DEBUG, Info, Warn and Error
// to theirs. The level threshold is logger's; SetLevel does nothing.
func HCLog(logger *slog.Logger, name string) hclog.Logger {
	h := &hcLogger{name: name, base: logger}
	h.slog = logger
	if name != "" {
		h.slog = logger.With("logger", name)
	}
	return h
}

type hcLogger struct {
	name string
	// base is the logger before name and implied were attached.
	base    *slog.Logger
	slog    *slog.Logger
	implied []any
}

var _ hclog.Logger = (*hcLogger)(nil)

// slogLevel maps an hclog level onto slog's; ok is false for Off.
func slogLevel(l hclog.Level) (slog.Level, bool) {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug, true
	case hclog.Warn:
		return slog.LevelWarn, true
	case hclog.Error:
		return slog.LevelError, true
	case hclog.Off:
		return 0, false
	default: // Info, NoLevel
		return slog.LevelInfo, true
	}
}

// args turns hclog's key/value list into slog's: keys become strings,
// values go through hcValue, and a lone trailing value is kept
// under EXTRA_VALUE_AT_END as hclog does.
func args(kv []any) []any {
	out := make([]any, 0, len(kv)+1)
	for i := 0; i < len(kv); i += 2 {
		if i+1 == len(kv) {
			out = append(out, "EXTRA_VALUE_AT_END", kv[i])
			break
		}
		k, ok := kv[i].(string)
		if !ok {
			k = fmt.Sprint(kv[i])
		}
		v := kv[i+1]
		v = hcValue(v)
		out = append(out, k, v)
	}
	return out
}

// hcValue renders v as hclog would where slog's JSON would not: an
// hclog.Format is formatted, and a fmt.Stringer that is not a JSON
// marshaler, an error or a slog.LogValuer (raft logs its *Raft, whose
// fields are unexported) becomes its String(), not "{}".
func hcValue(v any) any {
	switch x := v.(type) {
	case hclog.Format:
		if len(x) > 0 {
			if s, ok := x[0].(string); ok {
				return fmt.Sprintf(s, x[1:]...)
			}
		}
		return fmt.Sprint(x...)
	case json.Marshaler, error, slog.LogValuer:
		return v
	case fmt.Stringer:
		return stringOf(x)
	}
	return v
}

// stringOf is x.String(), or "<nil>" when that panics on a nil receiver
// (a typed nil pointer), as fmt prints it.
func stringOf(x fmt.Stringer) (s string) {
	defer func() {
		if recover() != nil {
			s = "<nil>"
		}
	}()
	return x.String()
}

func (h *hcLogger) Log(level hclog.Level, msg string, kv ...any) {
	lv, ok := slogLevel(level)
	if !ok || !h.slog.Enabled(context.Background(), lv) {
		return // dropped before its values are rendered (raft is chatty at debug)
	}
	h.slog.Log(context.Background(), lv, msg, args(kv)...)
}

func (h *hcLogger) Trace(msg string, kv ...any) { h.Log(hclog.Trace, msg, kv...) }
func (h *hcLogger) Debug(msg string, kv ...any) { h.Log(hclog.Debug, msg, kv...) }
func (h *hcLogger) Info(msg string, kv ...any)  { h.Log(hclog.Info, msg, kv...) }
func (h *hcLogger) Warn(msg string, kv ...any)  { h.Log(hclog.Warn, msg, kv...) }
func (h *hcLogger) Error(msg string, kv ...any) { h.Log(hclog.Error, msg, kv...) }

func (h *hcLogger) enabled(l hclog.Level) bool {
	lv, ok := slogLevel(l)
	return ok && h.slog.Enabled(context.Background(), lv)
}

func (h *hcLogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hcLogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hcLogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hcLogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hcLogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hcLogger) ImpliedArgs() []any { return h.implied }

func (h *hcLogger) With(kv ...any) hclog.Logger {
	c := *h
	c.implied = append(append([]any(nil), h.implied...), kv...)
	c.slog = h.slog.With(args(kv)...)
	return &c
}

func (h *hcLogger) Name() string { return h.name }

func (h *hcLogger) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.ResetNamed(name)
}

func (h *hcLogger) ResetNamed(name string) hclog.Logger {
	c := HCLog(h.base, name).(*hcLogger)
	if len(h.implied) > 0 {
		return c.With(h.implied...)
	}
	return c
}

// SetLevel does nothing: the level is the slog logger's (--log-level).
func (h *hcLogger) SetLevel(hclog.Level) {}

func (h *hcLogger) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if h.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (h *hcLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hcLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &hcStdWriter{h: h, force: opts.ForceLevel}
}

// hcStdWriter is what a library's log.Logger writes to: each line is
// logged at its "[LEVEL]" prefix's level (Info without one), or at force.
type hcStdWriter struct {
	h     *hcLogger
	force hclog.Level
}

func (w *hcStdWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(string(bytes.TrimRight(b, "\n")), "\n") {
		level := w.force
		if level == hclog.NoLevel {
			level = hclog.Info
			for _, p := range []struct {
				prefix string
				l      hclog.Level
			}{{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info}, {"[WARN]", hclog.Warn}, {"[ERR]", hclog.Error}, {"[ERROR]", hclog.Error}} {
				if i := strings.Index(line, p.prefix); i >= 0 {
					level, line = p.l, line[i+len(p.prefix):]
					break
				}
			}
		}
		w.h.Log(level, strings.TrimSpace(line))
	}
	return len(b), nil
}
