package blob

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serve mounts the store's handler the way the coordinator's RPC mux does.
func serve(t testing.TB, s *Store) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(PathPrefix, s.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func do(t testing.TB, method, url string, body []byte, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, b
}

func TestHandlerPutGetHead(t *testing.T) {
	s := newStore(t)
	srv := serve(t, s)
	b := randBytes(2*BlockSize+77, 20)
	sha := shaOf(b)
	url := srv.URL + "/blobs/" + sha
	size := map[string]string{HeaderSize: strconv.Itoa(len(b))}

	if resp, _ := do(t, "HEAD", url, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD absent = %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", url, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET absent = %d", resp.StatusCode)
	}
	if resp, _ := do(t, "PUT", url, b, nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PUT without size = %d", resp.StatusCode)
	}
	if resp, _ := do(t, "PUT", url, b[:len(b)-1], map[string]string{HeaderSize: strconv.Itoa(len(b) - 1)}); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PUT mismatching body = %d", resp.StatusCode)
	}
	if s.Has(sha) {
		t.Fatal("mismatching PUT kept")
	}
	if resp, body := do(t, "PUT", url, b, size); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT = %d %s", resp.StatusCode, body)
	}
	if !s.Has(sha) {
		t.Fatal("PUT not stored")
	}

	resp, _ := do(t, "HEAD", url, nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get(HeaderSize) != strconv.Itoa(len(b)) {
		t.Fatalf("HEAD = %d size %q", resp.StatusCode, resp.Header.Get(HeaderSize))
	}
	resp, got := do(t, "GET", url, nil, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(b)) || !bytes.Equal(got, b) {
		t.Fatalf("GET = %d, Content-Length %d, %d bytes", resp.StatusCode, resp.ContentLength, len(got))
	}
	off, n := BlockSize-5, BlockSize+10
	resp, got = do(t, "GET", url+"?offset="+strconv.Itoa(off)+"&length="+strconv.Itoa(n), nil, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(n) || !bytes.Equal(got, b[off:off+n]) {
		t.Fatalf("ranged GET = %d, Content-Length %d, %d bytes", resp.StatusCode, resp.ContentLength, len(got))
	}
	resp, got = do(t, "GET", url+"?offset="+strconv.Itoa(len(b)-3), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, b[len(b)-3:]) {
		t.Fatalf("GET tail = %d, %q", resp.StatusCode, got)
	}
	if resp, _ := do(t, "GET", url+"?offset=0&length="+strconv.Itoa(len(b)+1), nil, nil); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("GET past end = %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", url+"?offset=x", nil, nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("GET bad offset = %d", resp.StatusCode)
	}
	if resp, _ := do(t, "POST", url, []byte("x"), nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST = %d", resp.StatusCode)
	}
}

func TestHandlerBadSHA(t *testing.T) {
	srv := serve(t, newStore(t))
	for _, name := range []string{"xyz", strings.Repeat("A", 64), strings.Repeat("0", 65), "..%2f..%2fetc"} {
		for _, m := range []string{"GET", "HEAD", "PUT"} {
			resp, _ := do(t, m, srv.URL+"/blobs/"+name, []byte{}, map[string]string{HeaderSize: "0"})
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s /blobs/%s = %d, want 400", m, name, resp.StatusCode)
			}
		}
	}
}

func TestHandlerGetCorrupt(t *testing.T) {
	s := newStore(t)
	srv := serve(t, s)
	b := randBytes(2*BlockSize, 21)
	sha := ingest(t, s, b)

	// Damage in the first block: found before any byte is sent.
	flipByte(t, s.path(sha), 1)
	if resp, _ := do(t, "GET", srv.URL+"/blobs/"+sha, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET corrupt = %d, want 404", resp.StatusCode)
	}
	if !s.Quarantined(sha) {
		t.Fatal("not quarantined")
	}

	// Damage in a later block: the body is cut short, never completed.
	sha = ingest(t, s, b)
	flipByte(t, s.path(sha), BlockSize+1)
	resp, err := http.Get(srv.URL + "/blobs/" + sha)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("GET with late corruption read %d bytes cleanly", len(got))
	}
	if bytes.Equal(got, b) {
		t.Fatal("corrupt body delivered in full")
	}
}

func TestHeadRestartsGCGrace(t *testing.T) {
	// A pusher that finds the blob by HEAD counts it as a replica without
	// uploading, so the HEAD must keep GC from deleting it before commit.
	s := newStore(t)
	srv := serve(t, s)
	headed := ingest(t, s, []byte("found by a pusher"))
	idle := ingest(t, s, []byte("nobody asked"))
	age(t, s, headed, 2*time.Hour)
	age(t, s, idle, 2*time.Hour)
	if resp, _ := do(t, "HEAD", srv.URL+PathPrefix+headed, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD = %d", resp.StatusCode)
	}
	r := &Replicator{Store: s, Self: "n0"}
	if n, err := r.GC(nil, time.Hour); err != nil || n != 1 {
		t.Fatalf("GC = %d, %v; want 1, nil", n, err)
	}
	if !s.Has(headed) || s.Has(idle) {
		t.Fatalf("after GC: headed present %v, idle present %v; want true, false", s.Has(headed), s.Has(idle))
	}
}

func TestReplicateRestartsLocalGCGrace(t *testing.T) {
	// A caller commits a reference right after Replicate counted the local
	// copy: that copy must not be GC's to delete meanwhile.
	s := newStore(t)
	sha := ingest(t, s, []byte("counted by Replicate"))
	age(t, s, sha, 2*time.Hour)
	r := &Replicator{Store: s, Self: "n0"}
	if holders, err := r.Replicate(context.Background(), sha, 1); err != nil || len(holders) != 1 {
		t.Fatalf("Replicate = %v, %v", holders, err)
	}
	if n, err := r.GC(nil, time.Hour); err != nil || n != 0 || !s.Has(sha) {
		t.Fatalf("GC after Replicate deleted %d (err %v); blob present %v", n, err, s.Has(sha))
	}
	if _, ok := s.Hold(strings.Repeat("0", 64)); ok {
		t.Fatal("Hold reports a blob that is not there")
	}
}
