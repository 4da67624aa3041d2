// Package sentrytest runs a local HTTP server posing as a Sentry project's
// envelope endpoint, so tests can assert what the Sentry SDK sends: point
// SENTRY_DSN at Server.DSN, initialize Sentry, act, then read Items.
package sentrytest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getsentry/sentry-go"
)

// Item is one event or transaction the fake Sentry received, with the
// fields tests assert on.
type Item struct {
	// Type is "event" or "transaction".
	Type        string                    `json:"type"`
	Message     string                    `json:"message"`
	Transaction string                    `json:"transaction"`
	Release     string                    `json:"release"`
	Environment string                    `json:"environment"`
	Level       string                    `json:"level"`
	Tags        map[string]string         `json:"tags"`
	Contexts    map[string]map[string]any `json:"contexts"`
	User        map[string]any            `json:"user"`
	Request     map[string]any            `json:"request"`
	Exception   []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"exception"`
}

// Server is the fake Sentry; it stops when the test ends.
type Server struct {
	t   testing.TB
	srv *httptest.Server
	mu  sync.Mutex
	raw []string
	got []Item
}

// New starts a fake Sentry on a loopback port chosen by the OS.
func New(t testing.TB) *Server {
	s := &Server{t: t}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// DSN is the DSN of project 1 on this server: envelopes go to
// /api/1/envelope/.
func (s *Server) DSN() string {
	return "http://key@" + strings.TrimPrefix(s.srv.URL, "http://") + "/1"
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/1/envelope/" {
		s.t.Errorf("fake sentry: unexpected path %s", r.URL.Path)
		http.NotFound(w, r)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			s.t.Errorf("fake sentry: gzip: %v", err)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		s.t.Errorf("fake sentry: read: %v", err)
		return
	}
	items, err := ParseEnvelope(data)
	if err != nil {
		s.t.Errorf("fake sentry: %v\n%s", err, data)
	}
	s.mu.Lock()
	s.raw = append(s.raw, string(data))
	s.got = append(s.got, items...)
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// ParseEnvelope splits a Sentry envelope into its event and transaction
// items; other item types (client reports, logs) are skipped.
func ParseEnvelope(data []byte) ([]Item, error) {
	rd := bufio.NewReader(bytes.NewReader(data))
	if _, err := rd.ReadBytes('\n'); err != nil {
		return nil, fmt.Errorf("envelope header: %w", err)
	}
	var out []Item
	for {
		line, err := rd.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				return out, nil
			}
			continue
		}
		var hdr struct {
			Type   string `json:"type"`
			Length *int   `json:"length"`
		}
		if jerr := json.Unmarshal(line, &hdr); jerr != nil {
			return out, fmt.Errorf("item header %q: %w", line, jerr)
		}
		var payload []byte
		if hdr.Length != nil {
			payload = make([]byte, *hdr.Length)
			if _, err := io.ReadFull(rd, payload); err != nil {
				return out, fmt.Errorf("item payload: %w", err)
			}
		} else {
			payload, _ = rd.ReadBytes('\n')
		}
		if hdr.Type == "event" || hdr.Type == "transaction" {
			var it Item
			if err := json.Unmarshal(payload, &it); err != nil {
				return out, fmt.Errorf("%s payload: %w", hdr.Type, err)
			}
			it.Type = hdr.Type
			out = append(out, it)
		}
	}
}

// Items flushes the process's Sentry client and returns what arrived of
// type typ ("event" or "transaction"), in arrival order.
func (s *Server) Items(typ string) []Item {
	s.t.Helper()
	if !sentry.Flush(5 * time.Second) {
		s.t.Fatal("sentry flush timed out")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Item
	for _, it := range s.got {
		if it.Type == typ {
			out = append(out, it)
		}
	}
	return out
}

// WaitItems is Items once at least n items of type typ arrived, or after
// 5 s: Flush can return with the last envelope still on its way.
func (s *Server) WaitItems(typ string, n int) []Item {
	s.t.Helper()
	items := s.Items(typ)
	for deadline := time.Now().Add(5 * time.Second); len(items) < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		items = s.Items(typ)
	}
	return items
}

// Raw returns every envelope received so far, as text, for asserting that
// something never reached Sentry.
func (s *Server) Raw() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.raw, "\n")
}
