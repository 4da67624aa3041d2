package api

import (
	"net/http"
	"net/http/pprof"
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
		pprof.Cmdline(w, r)
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
