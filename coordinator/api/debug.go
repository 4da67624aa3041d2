package api

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"strings"
)

// debugPrefix is where the Go runtime profiles are served. sentry-go has
// no profiler, so this is how an operator profiles a live coordinator:
//
//	go tool pprof -http=: -H "Authorization: Bearer $ROOT_KEY" \
//	  http://coordinator:8080/debug/pprof/profile?seconds=30
const debugPrefix = "/debug/pprof/"

// debugRoutes adds the admin-only net/http/pprof endpoints. They are never
// served without an admin key: profiles and cmdline reveal internals.
func (a *API) debugRoutes(route func(pattern string, methods map[string]endpoint)) {
	e := ep(accessAdmin, a.pprof)
	route(debugPrefix, map[string]endpoint{http.MethodGet: e, http.MethodPost: e})
}

// pprof dispatches to the net/http/pprof handler for the profile named in
// the path: the index, cmdline, profile (CPU), symbol, trace, or a runtime
// profile (heap, goroutine, allocs, block, mutex, threadcreate).
func (a *API) pprof(w http.ResponseWriter, r *http.Request, _ *principal) error {
	switch strings.TrimPrefix(r.URL.Path, debugPrefix) {
	case "cmdline":
		serveCmdline(w, redactArgs(commandLine()))
	case "profile":
		pprof.Profile(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	case "trace":
		pprof.Trace(w, r)
	default:
		// Index serves the listing at the prefix and each named profile
		// below it, answering 404 for an unknown name.
		pprof.Index(w, r)
	}
	return nil
}

// commandLine returns the process's arguments; tests replace it.
var commandLine = func() []string { return os.Args }

// serveCmdline writes args as net/http/pprof's cmdline does: joined by NUL
// bytes, as text.
func serveCmdline(w http.ResponseWriter, args []string) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = fmt.Fprint(w, strings.Join(args, "\x00"))
}

// redacted replaces the value of a secret flag in the served command line.
const redacted = "REDACTED"

// secretFlagWords mark a flag whose value is a secret: --root-key,
// --gossip-key, --engine-api-key, --api-key, and any later flag named
// like them. Flags that name a secret's file (--tls-key, --gossip-key-file)
// match too; hiding a path costs little.
var secretFlagWords = []string{"key", "token", "secret", "password", "passwd", "credential", "dsn"}

// secretFlag reports whether arg is a flag (-name or --name, with or
// without =value) whose value must not be shown, and returns its name with
// dashes.
func secretFlag(arg string) (name string, ok bool) {
	if !strings.HasPrefix(arg, "-") || arg == "-" || arg == "--" {
		return "", false
	}
	name, _, _ = strings.Cut(arg, "=")
	if strings.ContainsAny(name, " \t\n") {
		return "", false // words of another command line, see redactWords
	}
	lower := strings.ToLower(strings.TrimLeft(name, "-"))
	for _, w := range secretFlagWords {
		if strings.Contains(lower, w) {
			return name, true
		}
	}
	return "", false
}

// redactArgs returns args with the value of every secret flag replaced by
// "REDACTED", in both the --flag=value and the --flag value forms. Values
// holding spaces (--vllm-args "--api-key K …") carry another program's
// flags and are redacted word by word too.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	hideNext := false
	for i, arg := range args {
		if hideNext {
			out[i], hideNext = redacted, false
			continue
		}
		if name, ok := secretFlag(arg); ok {
			if strings.Contains(arg, "=") {
				out[i] = name + "=" + redacted
			} else {
				out[i], hideNext = arg, true
			}
			continue
		}
		if name, value, found := strings.Cut(arg, "="); found && strings.HasPrefix(name, "-") {
			out[i] = name + "=" + redactWords(value)
			continue
		}
		out[i] = redactWords(arg)
	}
	return out
}

// redactWords redacts s as a command line of its own when it holds
// spaces; it returns s unchanged when nothing in it is secret.
func redactWords(s string) string {
	if !strings.ContainsAny(s, " \t\n") {
		return s
	}
	words := strings.Fields(s)
	hidden := redactArgs(words)
	if slices.Equal(words, hidden) {
		return s
	}
	return strings.Join(hidden, " ")
}
