// Package httpsafe makes HTTP servers that a slow or silent client cannot
// tie up: headers must arrive within a bound, idle keep-alive connections
// are closed, and a request body that stops flowing is cut off, while a
// large upload that keeps moving may take as long as it needs.
package httpsafe

import (
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// Timeouts bound a server's connections.
type Timeouts struct {
	// Header bounds reading a request's headers (slowloris).
	Header time.Duration
	// BodyIdle is the longest a request body may go without sending a
	// byte; each read extends the deadline, so a steady upload of any
	// size succeeds.
	BodyIdle time.Duration
	// Idle closes keep-alive connections with no request for this long.
	Idle time.Duration
}

// DefaultTimeouts suit the API and RPC servers.
var DefaultTimeouts = Timeouts{Header: 10 * time.Second, BodyIdle: 30 * time.Second, Idle: 2 * time.Minute}

// NewServer returns a server for h with t applied.
func NewServer(h http.Handler, t Timeouts) *http.Server {
	return &http.Server{
		Handler:           BodyIdleTimeout(h, t.BodyIdle),
		ReadHeaderTimeout: t.Header,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    64 << 10,
	}
}

// BodyIdleTimeout cuts a request whose body stops flowing for d: before
// every read of the body the connection's read deadline moves to d from
// now. Handlers that wait on other things (long polls, streams they send)
// are not bounded by it, only body reads are.
func BodyIdleTimeout(h http.Handler, d time.Duration) http.Handler {
	if d <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		b := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), d: d}
		r.Body = b
		// The deadline starts now, not at the first read: a handler that
		// answers without reading the body (a 401, a 404) has the server
		// drain it before the answer goes out, and a client that sends
		// nothing would hold that for ever. (The server only watches the
		// connection in the background once the body is read to its end,
		// so the deadline cannot end a long response early.)
		_ = b.rc.SetReadDeadline(time.Now().Add(d))
		h.ServeHTTP(w, r)
		// A body left unread is drained by the server after the handler
		// returns, under the deadline of the last read, so that too is
		// bounded; one read to its end has its deadline cleared already.
	})
}

// BodyDeadline bounds the whole of r's body, on top of the idle bound:
// no read of it goes past t. It reports false when r's body is not one
// BodyIdleTimeout wrapped (call it before wrapping the body again).
func BodyDeadline(r *http.Request, t time.Time) bool {
	b, ok := r.Body.(*idleBody)
	if ok {
		b.until = t
	}
	return ok
}

// idleBody moves the read deadline before each read, and clears it once
// the body is read to its end: the server then watches the connection for
// the client going away, and a deadline there would end long responses.
type idleBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	d     time.Duration
	until time.Time // BodyDeadline's bound; zero: none
	eof   bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	deadline := time.Now().Add(b.d)
	if !b.until.IsZero() && b.until.Before(deadline) {
		deadline = b.until
	}
	// An error means the connection cannot take deadlines (a test
	// recorder); reading on without one is what it did before.
	_ = b.rc.SetReadDeadline(deadline)
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// Serve runs srv on ln until it is shut down: over TLS when srv has a
// TLSConfig (certificates come from it), else in plain text. A clean
// shutdown returns nil.
func Serve(srv *http.Server, ln net.Listener) error {
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
