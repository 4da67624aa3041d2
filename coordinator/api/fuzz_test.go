package api

import (
	"bytes"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"
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
