package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vbatch/vbatch/coordinator/validate"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// FuzzUpload throws random multipart bodies, boundaries and field orders
// at POST /v1/files: the API must answer every one with a JSON response,
// never panic, and change no state unless it answered 200.
func FuzzUpload(f *testing.F) {
	f.Add("bnd", []byte("--bnd\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--bnd\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{\"a\":1}\n\r\n--bnd--\r\n"))
	f.Add("x", []byte("--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhello\r\n--x\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n--x--\r\n"))
	f.Add("x", []byte("--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"))
	f.Add("", []byte("not multipart at all"))
	f.Add("b\"q", []byte("--b\"q\r\n\r\n--b\"q--"))
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.WriteField("purpose", "batch")
	w, _ := mw.CreateFormFile("file", "x.jsonl")
	_, _ = w.Write([]byte(batchLines(3)))
	_ = mw.WriteField("expires_after[anchor]", "created_at")
	_ = mw.WriteField("expires_after[seconds]", "4000")
	_ = mw.Close()
	f.Add(mw.Boundary(), buf.Bytes())

	b := newFakeBackend()
	a := New(b, Config{NoAuth: true, MaxUploadBytes: 512}, nil)
	h := a.Handler()
	f.Fuzz(func(t *testing.T, boundary string, body []byte) {
		before := b.snapshot()
		req := httptest.NewRequest(http.MethodPost, "/v1/files", bytes.NewReader(body))
		req.Header.Set("Content-Type", fmt.Sprintf("multipart/form-data; boundary=%q", boundary))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("status %d without JSON: %q", rec.Code, rec.Body.String())
		}
		switch rec.Code {
		case http.StatusOK:
			if b.snapshot() == before {
				t.Fatal("200 without a new file")
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if after := b.snapshot(); after != before {
				t.Fatalf("refused upload (%d %s) changed state", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body.String())
		}
	})
}

// fuzzBackend is a fresh fake backend holding two batch input files of
// project "default": file-in of three requests and file-big of six.
func fuzzBackend(t *testing.T) *fakeBackend {
	b := newFakeBackend()
	for _, f := range []*vbatchv1.File{
		{Id: "file-in", Project: defaultProject, Purpose: "batch", Bytes: 300, Lines: 3, CreatedAt: 1},
		{Id: "file-big", Project: defaultProject, Purpose: "batch", Bytes: 600, Lines: 6, CreatedAt: 1},
	} {
		if _, err := b.Apply(context.Background(), &vbatchv1.CreateFile{File: f}); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// serveFuzz sends one request to a and returns the recorder, failing on
// an answer that is not JSON.
func serveFuzz(t *testing.T, a *API, method, path string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, req)
	if rec.Header().Get("Content-Type") != "application/json" || !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("status %d without JSON: %q", rec.Code, rec.Body.String())
	}
	return rec
}

// FuzzCreateBatchRequest throws JSON bodies at POST /v1/batches under a
// quota of five enqueued requests: every answer is JSON; a refusal (400,
// 413, 429) changes nothing; a 200 creates exactly the batch it answers,
// over file-in (file-big does not fit), with its bounds respected.
func FuzzCreateBatchRequest(f *testing.F) {
	f.Add([]byte(`{"input_file_id":"file-in","endpoint":"/v1/chat/completions","completion_window":"24h"}`))
	f.Add([]byte(`{"input_file_id":"file-in","endpoint":"/v1/embeddings","completion_window":"90m","metadata":{"k":"v"},"output_expires_after":{"anchor":"created_at","seconds":3600}}`))
	f.Add([]byte(`{"input_file_id":"file-in","endpoint":"/v1/responses","completion_window":"168h","metadata":null}`))
	f.Add([]byte(`{"input_file_id":"file-nope","endpoint":"/v1/chat/completions","completion_window":"24h"}`))
	f.Add([]byte(`{"input_file_id":"file-big","endpoint":"/v1/chat/completions","completion_window":"24h"}`))
	f.Add([]byte(`{"input_file_id":"file-in","endpoint":"/v1/chat/completions","completion_window":"0h"}`))
	f.Add([]byte(`{"input_file_id":7}`))
	f.Add([]byte(`{"metadata":{"a":1}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"input_file_id":"file-in","endpoint":"/v1/chat/completions","completion_window":"24h"} {}`))
	f.Add([]byte("\x00\xff{"))
	f.Fuzz(func(t *testing.T, body []byte) {
		b := fuzzBackend(t)
		a := New(b, Config{NoAuth: true, Limits: Limits{DefaultKeyLimits: KeyLimits{MaxEnqueuedRequests: 5}}}, nil)
		before := b.snapshot()
		rec := serveFuzz(t, a, http.MethodPost, "/v1/batches", body)
		switch rec.Code {
		case http.StatusOK:
			var got batchObject
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			stored := a.findBatch(&principal{project: defaultProject}, got.ID)
			if stored == nil || stored.InputFileId != "file-in" || len(stored.Metadata) > maxMetadataPairs ||
				stored.ExpiresAt <= stored.CreatedAt || stored.ExpiresAt-stored.CreatedAt > maxWindowMinutes*60 {
				t.Fatalf("answered %+v, stored %v", got, stored)
			}
		case http.StatusBadRequest, http.StatusNotFound, http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
			if after := b.snapshot(); after != before {
				t.Fatalf("refused (%d %s) but state changed", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body.String())
		}
	})
}

// FuzzCreateKeyRequest throws JSON bodies at POST /v1/admin/keys: a
// refusal changes nothing; a 201 stores a key of a valid project and known
// scopes, with finite limits, whose secret authenticates as that key.
func FuzzCreateKeyRequest(f *testing.F) {
	f.Add([]byte(`{"project":"alpha","name":"ci","scopes":["batch","read"]}`))
	f.Add([]byte(`{"scopes":["admin"],"limits":{"requests_per_second":2.5,"max_enqueued_requests":-1,"max_file_bytes":1e6}}`))
	f.Add([]byte(`{"project":"a b","scopes":["read"]}`))
	f.Add([]byte(`{"scopes":["root"]}`))
	f.Add([]byte(`{"scopes":["read"],"limits":{"requests_per_second":1e308}}`))
	f.Add([]byte(`{"scopes":["read"],"limits":{"max_file_bytes":"big"}}`))
	f.Add([]byte(`{"scopes":[],"name":null}`))
	f.Add([]byte(`{"Scopes":["read"],"PROJECT":"x"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		b := newFakeBackend()
		a := New(b, Config{NoAuth: true}, nil)
		before := b.snapshot()
		rec := serveFuzz(t, a, http.MethodPost, "/v1/admin/keys", body)
		switch rec.Code {
		case http.StatusCreated:
			var got keyObject
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			p := a.lookupKey(got.Key)
			if p == nil || p.keyID != got.ID || !projectRE.MatchString(p.project) || len(p.scopes) == 0 {
				t.Fatalf("created %+v, authenticates as %+v", got, p)
			}
			for _, s := range p.scopes {
				if _, ok := scopeNames[s]; !ok {
					t.Fatalf("stored scope %v", s)
				}
			}
			if l := got.Limits.RequestsPerSecond; math.IsNaN(l) || math.IsInf(l, 0) || l > maxKeyRPS {
				t.Fatalf("stored rate %v", l)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if after := b.snapshot(); after != before {
				t.Fatalf("refused (%d %s) but state changed", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body.String())
		}
	})
}

// FuzzInferenceRequest throws bodies at POST /v1/chat/completions with
// caps set: a body the router receives is the one sent, byte for byte,
// and asks for no more than the caps; any other answer is a 400.
func FuzzInferenceRequest(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":64,"n":1}`))
	f.Add([]byte(`{"model":"m","max_completion_tokens":65}`))
	f.Add([]byte(`{"model":"m","max_tokens":"64"}`))
	f.Add([]byte(`{"model":"m","n":2.0000001,"best_of":null}`))
	f.Add([]byte(`{"model":"m","max_tokens":1e999}`))
	f.Add([]byte(`{"model":"m","max_tokens":64,"max_tokens":65}`))
	f.Add([]byte(`{"model":"m","max_tokens":-1e3,"stream":true}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"model":"m"}garbage`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var got []byte
		routed := false
		a := New(newFakeBackend(), Config{NoAuth: true, Limits: Limits{MaxTokens: 64, MaxN: 2},
			Inference: func(w http.ResponseWriter, r *http.Request) error {
				routed = true
				var err error
				if got, err = io.ReadAll(r.Body); err != nil {
					return err
				}
				writeJSON(w, http.StatusOK, map[string]any{"object": "chat.completion"})
				return nil
			}}, nil)
		rec := serveFuzz(t, a, http.MethodPost, "/v1/chat/completions", body)
		switch rec.Code {
		case http.StatusOK:
			if !bytes.Equal(got, body) {
				t.Fatalf("router got %q, sent %q", got, body)
			}
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(body, &obj); err != nil || validate.CheckCaps(obj, 64, 2) != nil {
				t.Fatalf("routed a body over the caps or not an object: %q", body)
			}
		case http.StatusBadRequest:
			if routed {
				t.Fatalf("refused after routing: %s", rec.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body.String())
		}
	})
}
