package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// fakeBackend applies commands straight to a real FSM and keeps blobs in
// memory: the API under test sees the same state transitions as in a
// cluster, without raft.
type fakeBackend struct {
	f *fsm.FSM

	mu    sync.Mutex
	index uint64
	now   time.Time
	blobs map[string][]byte
	// applyErr, storeErr and readErr fail the next calls when set.
	applyErr error
	storeErr error
	readErr  error
	// staleErr is what StateFresh answers (nil: fresh).
	staleErr error
	// applied counts commands that went through.
	applied         int
	consistentCalls int
	holdCalls       int
	// onConsistent runs inside ConsistentRead: a test applies the writes
	// this node "lagged" behind on.
	onConsistent func()
	// onStore runs once StoreUpload has stored the bytes, before it
	// returns: a test commits what another coordinator did meanwhile.
	onStore func()
	// onApply sees every command before it is applied.
	onApply       func(cmd proto.Message)
	status        *ClusterStatus
	panicOnStatus bool
	// level is the FSM level every server applies; 0 is fsm.Level.
	level int
	// leaderAhead is how far the leader's clock, which stamps every
	// command, runs ahead of this coordinator's (now).
	leaderAhead time.Duration
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		f:     fsm.New(),
		now:   time.Unix(1_700_000_000, 0),
		blobs: map[string][]byte{},
		status: &ClusterStatus{Leader: "c1", Servers: []ClusterServer{
			{ID: "c1", RaftAddr: "127.0.0.1:8002", Suffrage: "voter", State: "leader", LastIndex: 7, Term: 2, Reachable: true},
		}},
	}
}

func (b *fakeBackend) FSM() *fsm.FSM { return b.f }

func (b *fakeBackend) Apply(_ context.Context, cmd proto.Message) (uint64, error) {
	b.mu.Lock()
	hook := b.onApply
	b.mu.Unlock()
	if hook != nil {
		hook(cmd)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.applyErr != nil {
		return 0, b.applyErr
	}
	data, err := fsm.Encode(cmd, b.now.Add(b.leaderAhead))
	if err != nil {
		return 0, fmt.Errorf("encode: %w", err)
	}
	b.index++
	res, ok := b.f.Apply(&raft.Log{Index: b.index, Data: data}).(*vbatchv1.Result)
	if !ok {
		return 0, fmt.Errorf("apply %T: unexpected response", cmd)
	}
	if res.Code == "" {
		b.applied++
	}
	return res.Index, fsm.FromResult(res)
}

func (b *fakeBackend) ConsistentRead(context.Context) error {
	b.mu.Lock()
	b.consistentCalls++
	err, hook := b.readErr, b.onConsistent
	b.onConsistent = nil
	b.mu.Unlock()
	if hook != nil && err == nil {
		hook()
	}
	return err
}

func (b *fakeBackend) StoreUpload(_ context.Context, r io.Reader) (*vbatchv1.BlobRef, []string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, nil, fmt.Errorf("ingest: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.storeErr != nil {
		return nil, nil, b.storeErr
	}
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	b.blobs[h] = data
	if hook := b.onStore; hook != nil {
		b.onStore = nil
		b.mu.Unlock()
		hook()
		b.mu.Lock()
	}
	return &vbatchv1.BlobRef{Sha256: h, Bytes: int64(len(data))}, []string{"c1", "c2"}, nil
}

func (b *fakeBackend) HoldBlob(_ context.Context, sha string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holdCalls++
	if _, ok := b.blobs[sha]; !ok {
		return nil, fmt.Errorf("hold blob %s: not stored: %w", sha, ErrUnavailable)
	}
	return []string{"c1", "c2"}, nil
}

func (b *fakeBackend) OpenFile(_ context.Context, f *vbatchv1.File) (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var buf bytes.Buffer
	for _, p := range f.Parts {
		data, ok := b.blobs[p.Sha256]
		if !ok {
			return nil, fmt.Errorf("blob %s missing", p.Sha256)
		}
		buf.Write(data)
	}
	return io.NopCloser(&buf), nil
}

func (b *fakeBackend) ClusterStatus(context.Context) (*ClusterStatus, error) {
	if b.panicOnStatus {
		panic("cluster status exploded")
	}
	return b.status, nil
}

func (b *fakeBackend) Agents(context.Context) ([]AgentInfo, error) {
	return []AgentInfo{{ID: "a1", Models: []string{"m"}, State: "alive"}}, nil
}

func (b *fakeBackend) DrainAgent(_ context.Context, id string) error {
	if id != "a1" {
		return fsm.ErrNotFound
	}
	return nil
}

func (b *fakeBackend) UndrainAgent(_ context.Context, id string) error {
	if id != "a1" {
		return fsm.ErrNotFound
	}
	return nil
}

// RemoveAgent knows "a1" (stopped), "live" (alive in gossip) and no other.
func (b *fakeBackend) RemoveAgent(_ context.Context, id string) error {
	switch id {
	case "a1":
		return nil
	case "live":
		return fmt.Errorf("%w: agent live is alive in gossip; stop it first", fsm.ErrConflict)
	}
	return fsm.Reject(fsm.ErrNotFound, "agent %s", id)
}

func (b *fakeBackend) StateFresh() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.staleErr
}

func (b *fakeBackend) AtFSMLevel(level int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	have := b.level
	if have == 0 {
		have = fsm.Level
	}
	return have >= level
}

func (b *fakeBackend) Now() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.now
}

func (b *fakeBackend) advance(d time.Duration) {
	b.mu.Lock()
	b.now = b.now.Add(d)
	b.mu.Unlock()
}

func (b *fakeBackend) blobCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.blobs)
}

// snapshot is a comparable picture of the keys, files and batches.
func (b *fakeBackend) snapshot() string {
	var parts []string
	b.f.View(func(s *fsm.State) {
		for id, k := range s.APIKeys {
			parts = append(parts, fmt.Sprintf("key %s revoked=%d", id, k.RevokedAt))
		}
		for id, f := range s.Files {
			parts = append(parts, fmt.Sprintf("file %s bytes=%d", id, f.Bytes))
		}
		for id, bt := range s.Batches {
			parts = append(parts, fmt.Sprintf("batch %s %v", id, bt.Status))
		}
	})
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// env is an API under test.
type env struct {
	t   *testing.T
	b   *fakeBackend
	api *API
	srv *httptest.Server
}

const testRoot = "root-secret"

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	b := newFakeBackend()
	a := New(b, cfg, nil)
	return &env{t: t, b: b, api: a, srv: newServer(t, a)}
}

func newServer(t *testing.T, a *API) *httptest.Server {
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// rootEnv has a root key, so every request needs a key.
func rootEnv(t *testing.T) *env { return newEnv(t, Config{RootKey: testRoot}) }

// response is an answer as a test sees it.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status %d body %q: %v", r.status, r.body, err)
	}
	return m
}

// wantError asserts an OpenAI error object with the given status, type and
// code.
func (r response) wantError(t *testing.T, status int, typ, code string) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	m := r.json(t)
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object: %s", r.body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e[k]; !ok {
			t.Fatalf("error object lacks %q: %s", k, r.body)
		}
	}
	if e["type"] != typ || e["code"] != nilIfEmpty(code) {
		t.Fatalf("error type %v code %v, want %s %s: %s", e["type"], e["code"], typ, code, r.body)
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Fatalf("empty message: %s", r.body)
	}
	return e
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func (e *env) do(method, path, key string, body io.Reader, header ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.Header.Get(requestIDHeader) == "" {
		e.t.Fatalf("%s %s: no %s header", method, path, requestIDHeader)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func (e *env) postJSON(path, key string, v any) response {
	e.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(http.MethodPost, path, key, bytes.NewReader(data), "Content-Type", "application/json")
}

// field is one multipart field; a file when filename is set.
type field struct{ name, filename, value string }

func multipartBody(t *testing.T, fields ...field) (*bytes.Buffer, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		var w io.Writer
		var err error
		if f.filename != "" {
			w, err = mw.CreateFormFile(f.name, f.filename)
		} else {
			w, err = mw.CreateFormField(f.name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, f.value); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf, mw.FormDataContentType()
}

func (e *env) upload(key string, fields ...field) response {
	e.t.Helper()
	body, ct := multipartBody(e.t, fields...)
	return e.do(http.MethodPost, "/v1/files", key, body, "Content-Type", ct)
}

// uploadOK uploads content with purpose and returns the file id.
func (e *env) uploadOK(key, purpose, content string) string {
	e.t.Helper()
	r := e.upload(key, field{name: "purpose", value: purpose}, field{name: "file", filename: "in.jsonl", value: content})
	if r.status != http.StatusOK {
		e.t.Fatalf("upload: %d %s", r.status, r.body)
	}
	return r.json(e.t)["id"].(string)
}

// batchOK creates a batch over input and returns its id.
func (e *env) batchOK(key, input string) string {
	e.t.Helper()
	r := e.postJSON("/v1/batches", key, map[string]any{"input_file_id": input, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
	if r.status != http.StatusOK {
		e.t.Fatalf("create batch: %d %s", r.status, r.body)
	}
	return r.json(e.t)["id"].(string)
}

// createKey makes a stored key through the admin API and returns it.
func (e *env) createKey(project string, scopes ...string) string {
	e.t.Helper()
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": project, "name": "k", "scopes": scopes})
	if r.status != http.StatusCreated {
		e.t.Fatalf("create key: %d %s", r.status, r.body)
	}
	return r.json(e.t)["key"].(string)
}

// createKeyLimited makes a stored key with limits (the JSON object of
// POST /v1/admin/keys) and returns it.
func (e *env) createKeyLimited(project string, limits map[string]any, scopes ...string) string {
	e.t.Helper()
	r := e.postJSON("/v1/admin/keys", testRoot, map[string]any{"project": project, "name": "k", "scopes": scopes, "limits": limits})
	if r.status != http.StatusCreated {
		e.t.Fatalf("create key: %d %s", r.status, r.body)
	}
	return r.json(e.t)["key"].(string)
}

// batchLines is a valid batch input of n requests.
func batchLines(n int) string {
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, `{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}`+"\n", i)
	}
	return sb.String()
}

// applyKeys stores key records directly.
func (e *env) applyKeys(t *testing.T, keys ...*vbatchv1.APIKey) {
	t.Helper()
	for _, k := range keys {
		if _, err := e.b.Apply(context.Background(), &vbatchv1.CreateAPIKey{Key: k}); err != nil {
			t.Fatalf("create key %s: %v", k.Id, err)
		}
	}
}
