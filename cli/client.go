// Package cli implements vbctl, the vbatch cluster CLI, over the
// coordinators' OpenAI-compatible HTTP API.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/vbatch/vbatch/internal/version"
)

// DefaultAddr is the coordinator vbctl talks to when neither --addr nor the
// environment names one.
const DefaultAddr = "http://127.0.0.1:8000"

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 1 << 20

// errStalled is the cause of a stream cancelled because it made no
// progress (sent no byte of the request, got no answer, or no byte of the
// answer) for Client.Timeout.
var errStalled = errors.New("no answer within the timeout")

// Client talks to one coordinator's HTTP API. Any coordinator serves the
// whole API, so one address is enough.
type Client struct {
	// BaseURL is the server root, without /v1 ("http://10.0.0.1:8000").
	BaseURL string
	// APIKey is sent as a bearer token when not empty.
	APIKey string
	// Timeout bounds each JSON call, and for streamed uploads and downloads
	// how long the transfer may go without progress (a byte of the request
	// sent, the answer's headers, a byte of the answer), so a large upload
	// or download that keeps moving takes as long as it needs and one that
	// stalls fails; zero means no limit.
	Timeout time.Duration
	// Consistent asks the server to answer reads from the raft leader
	// rather than from its own, possibly lagging, copy of the state.
	Consistent bool
	// HTTP sends the requests; nil means http.DefaultClient.
	HTTP *http.Client
}

// NewClient returns a Client for addr, normalized by NormalizeBase.
func NewClient(addr, apiKey string, timeout time.Duration) *Client {
	return &Client{BaseURL: NormalizeBase(addr), APIKey: apiKey, Timeout: timeout}
}

// APIError is an OpenAI error object answered by the server, with the
// answer's HTTP status.
type APIError struct {
	Status  int
	Message string
	Type    string
	Param   string
	Code    string
}

// Error formats the error as vbctl prints it: "message (HTTP 404, not_found)".
func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s (HTTP %d, %s)", e.Message, e.Status, e.Code)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// Temporary reports whether the request may succeed when retried: the
// cluster had no leader or quorum, or asked the client to slow down.
func (e *APIError) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests
}

// NormalizeBase turns "host:port", "http://host:port" or an OpenAI-style
// base URL ending in /v1 into a base URL without /v1 or a trailing slash.
func NormalizeBase(addr string) string {
	addr = strings.TrimRight(strings.TrimSpace(addr), "/")
	addr = strings.TrimRight(strings.TrimSuffix(addr, "/v1"), "/")
	if addr == "" {
		return DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return addr
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// newRequest builds a request for path (which starts with /v1) with the
// headers every call carries.
func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if c.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	if c.Consistent {
		req.Header.Set("X-Vbatch-Consistent", "true")
	}
	req.Header.Set("User-Agent", "vbctl/"+version.Version)
	return req, nil
}

// Do sends a JSON request (in may be nil: no body) and decodes the JSON
// answer into out (nil: the answer is discarded). A non-2xx answer is
// returned as *APIError. Client.Timeout bounds the whole exchange.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := checkResponse(resp); err != nil {
		return err
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Stream sends a request with a streamed body (may be nil) and returns the
// answer's body for the caller to read and close. Client.Timeout bounds
// how long the exchange may make no progress, not the whole transfer.
func (c *Client) Stream(ctx context.Context, method, path, contentType string, body io.Reader) (io.ReadCloser, error) {
	rc, _, err := c.StreamWithHeader(ctx, method, path, contentType, body)
	return rc, err
}

// StreamWithHeader is Stream that also returns the answer's header.
func (c *Client) StreamWithHeader(ctx context.Context, method, path, contentType string, body io.Reader) (io.ReadCloser, http.Header, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	var wd *time.Timer
	progress := func() {}
	if c.Timeout > 0 {
		wd = time.AfterFunc(c.Timeout, func() { cancel(errStalled) })
		progress = func() { wd.Reset(c.Timeout) }
	}
	stop := func() {
		if wd != nil {
			wd.Stop()
		}
		cancel(nil)
	}
	if body != nil {
		body = &progressReader{r: body, progress: progress}
	}
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		stop()
		return nil, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		err = c.stalled(ctx, method, path, err)
		stop()
		return nil, nil, err
	}
	progress()
	if err := checkResponse(resp); err != nil {
		resp.Body.Close()
		stop()
		return nil, nil, err
	}
	in := &progressReader{r: resp.Body, progress: progress, fail: func(err error) error { return c.stalled(ctx, method, path, err) }}
	return &cancelOnClose{ReadCloser: readCloser{in, resp.Body}, cancel: stop}, resp.Header, nil
}

// stalled names the timeout in err when the stream was cancelled for
// making no progress.
func (c *Client) stalled(ctx context.Context, method, path string, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
		return fmt.Errorf("%s %s: %w (%s without progress)", method, path, cause, c.Timeout)
	}
	return err
}

// progressReader calls progress after every read that moved bytes, and
// passes read errors through fail (when set).
type progressReader struct {
	r        io.Reader
	progress func()
	fail     func(error) error
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.progress()
	}
	if err != nil && err != io.EOF && p.fail != nil {
		err = p.fail(err)
	}
	return n, err
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// cancelOnClose releases a stream's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// checkResponse turns a non-2xx answer into *APIError: the OpenAI error
// object when the body is one, else the body's text or the status text.
func checkResponse(resp *http.Response) error {
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var env struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Param   any    `json:"param"`
			Code    any    `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &env) == nil && env.Error != nil && env.Error.Message != "" {
		return &APIError{
			Status:  resp.StatusCode,
			Message: env.Error.Message,
			Type:    env.Error.Type,
			Param:   scalar(env.Error.Param),
			Code:    scalar(env.Error.Code),
		}
	}
	msg := strings.TrimSpace(string(b))
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &APIError{Status: resp.StatusCode, Message: msg}
}

// scalar renders a JSON string or number as text; null is empty.
func scalar(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	default:
		return fmt.Sprint(t)
	}
}

// temporary reports whether err is worth retrying while following a long
// operation: the server could not be reached, timed out or answered a
// temporary error. The caller checks its own context first.
func temporary(err error) bool {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.Temporary()
	}
	return true
}
