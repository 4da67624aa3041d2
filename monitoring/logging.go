package monitoring

import (
	"io"
	"log/slog"
	"strings"
)

// NewLogger returns the JSON slog logger every vbatch process uses: fields
// time, level, msg and logger (the component; With("logger", x) renames
// it rather than adding a second key), plus request_id and batch_id
// when a record is logged with a context carrying them (WithRequestID,
// WithBatchID).
func NewLogger(out io.Writer, level string, component string) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	h := slog.NewJSONHandler(out, &slog.HandlerOptions{Level: lv})
	return slog.New(contextHandler{inner: h, name: component})
}
