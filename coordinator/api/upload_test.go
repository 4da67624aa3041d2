package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/coordinator/blob"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// refCount is the byte-at-a-time definition of what uploadReader counts.
func refCount(data []byte, maxLine int64) (newlines, nonBlank, longLine int64) {
	var lineLen int64
	content := false
	for _, c := range data {
		if c == '\n' {
			newlines++
			if content {
				nonBlank++
			}
			content, lineLen = false, 0
			continue
		}
		lineLen++
		if maxLine > 0 && lineLen > maxLine && longLine == 0 {
			longLine = newlines + 1
		}
		if c != ' ' && c != '\t' && c != '\r' {
			content = true
		}
	}
	if content {
		nonBlank++
	}
	return newlines, nonBlank, longLine
}

// TestUploadReaderCounts compares the counts over random content, read in
// random pieces, with the byte-at-a-time definition.
func TestUploadReaderCounts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab{} \t\r\n\n")
	for trial := range 500 {
		data := make([]byte, rng.IntN(300))
		for i := range data {
			data[i] = alphabet[rng.IntN(len(alphabet))]
		}
		maxLine := int64(rng.IntN(12))
		u := &uploadReader{r: &choppyReader{r: bytes.NewReader(data), rng: rng}, max: 1 << 20, maxLine: maxLine}
		if _, err := io.Copy(io.Discard, u); err != nil {
			t.Fatal(err)
		}
		nl, nb, long := refCount(data, maxLine)
		if u.newlines != nl || u.nonBlank() != nb || u.longLine != long || u.n != int64(len(data)) {
			t.Fatalf("trial %d %q (max line %d): newlines %d nonBlank %d longLine %d; want %d %d %d",
				trial, data, maxLine, u.newlines, u.nonBlank(), u.longLine, nl, nb, long)
		}
	}
}

// choppyReader returns what r holds in random small pieces.
type choppyReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (c *choppyReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1+c.rng.IntN(min(len(p), 17))]
	}
	return c.r.Read(p)
}

// blobBackend is fakeBackend with uploads going to a real blob store, so a
// test sees what the store keeps. stored gets StoreUpload's outcomes (the
// first few: a test that does not read them never blocks an upload).
type blobBackend struct {
	*fakeBackend
	store  *blob.Store
	stored chan error
}

func (b *blobBackend) StoreUpload(_ context.Context, r io.Reader) (*vbatchv1.BlobRef, []string, error) {
	ref, err := b.store.Ingest(r)
	select {
	case b.stored <- err:
	default:
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ingest: %w", err)
	}
	return ref, []string{"c1", "c2"}, nil
}

func (b *blobBackend) HoldBlob(_ context.Context, sha string) ([]string, error) {
	if !b.store.Has(sha) {
		return nil, fmt.Errorf("hold blob %s: %w", sha, ErrUnavailable)
	}
	return []string{"c1", "c2"}, nil
}

func blobEnv(t *testing.T) (*env, *blobBackend) {
	t.Helper()
	s, err := blob.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := &blobBackend{fakeBackend: newFakeBackend(), store: s, stored: make(chan error, 8)}
	a := New(b, Config{RootKey: testRoot}, nil)
	return &env{t: t, b: b.fakeBackend, api: a, srv: newServer(t, a)}, b
}

// wantNothingStored fails unless the store holds no blob and the state no
// file.
func wantNothingStored(t *testing.T, e *env, b *blobBackend, what string) {
	t.Helper()
	if list, err := b.store.List(); err != nil || len(list) != 0 {
		t.Fatalf("%s: store holds %v (%v)", what, list, err)
	}
	if snap := e.b.snapshot(); snap != "" {
		t.Fatalf("%s: state changed: %s", what, snap)
	}
}

const cutBoundary = "cutb"

// cutForm is a multipart form, purpose then file, its body without the
// closing delimiter: tail follows the file's content.
func cutForm(content, tail string) string {
	return "--" + cutBoundary + "\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n" +
		"--" + cutBoundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n" +
		"Content-Type: application/octet-stream\r\n\r\n" + content + tail
}

// TestUploadCutShortStoresNothing: a chunked body that ends cleanly but
// before the form's closing delimiter, wherever it stops, is a 400 that
// keeps no blob and commits no file, not a file of the bytes that came.
func TestUploadCutShortStoresNothing(t *testing.T) {
	e, b := blobEnv(t)
	content := batchLines(3)
	post := func(body string) response {
		// A reader of unknown length: the client sends it chunked.
		return e.do(http.MethodPost, "/v1/files", testRoot, io.MultiReader(strings.NewReader(body)),
			"Content-Type", "multipart/form-data; boundary="+cutBoundary)
	}
	for _, c := range []struct{ name, body string }{
		{"in the file", cutForm(content[:len(content)-7], "")},
		{"in the delimiter", cutForm(content, "\r\n--"+cutBoundary)},
		{"after a delimiter", cutForm(content, "\r\n--"+cutBoundary+"\r\n")},
		{"in the next part's headers", cutForm(content, "\r\n--"+cutBoundary+"\r\nContent-Disposition: form-data; name=\"x\"\r\n")},
		{"in the next part", cutForm(content, "\r\n--"+cutBoundary+"\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nva")},
	} {
		r := post(c.body)
		r.wantError(t, http.StatusBadRequest, typeInvalidRequest, codeInvalidValue)
		if !strings.Contains(string(r.body), "malformed") {
			t.Fatalf("%s: message %s", c.name, r.body)
		}
		// The store's GC would collect a blob stored for a refused upload,
		// but a body cut inside the file must not leave one at all.
		if c.name == "in the file" {
			wantNothingStored(t, e, b, c.name)
		}
		if snap := e.b.snapshot(); snap != "" {
			t.Fatalf("%s: state changed: %s", c.name, snap)
		}
	}
	// The same form, closed, is a file.
	if r := post(cutForm(content, "\r\n--"+cutBoundary+"--\r\n")); r.status != http.StatusOK {
		t.Fatalf("closed form: %d %s", r.status, r.body)
	}
}

// TestUploadClientGoneMidFile: a client that disconnects in the middle of
// the file (its Content-Length not reached) leaves no blob behind.
func TestUploadClientGoneMidFile(t *testing.T) {
	e, b := blobEnv(t)
	body := cutForm(batchLines(100), "\r\n--"+cutBoundary+"--\r\n")
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d\r\n\r\n%s",
		testRoot, cutBoundary, len(body), body[:len(body)/2])
	_ = conn.(*net.TCPConn).CloseWrite()
	select {
	case err := <-b.stored:
		if err == nil {
			t.Fatal("the first half of a file was stored as a whole one")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upload never reached the store")
	}
	wantNothingStored(t, e, b, "client gone mid-file")
}

// TestUploadFormFieldsRefused: a filename too long to keep in every
// coordinator's state, a 'file' that is a plain field, and a purpose given
// twice are each a 400 naming the field, storing nothing.
func TestUploadFormFieldsRefused(t *testing.T) {
	e, b := blobEnv(t)
	part := func(disposition, value string) string {
		return "--" + cutBoundary + "\r\nContent-Disposition: form-data; " + disposition + "\r\n\r\n" + value + "\r\n"
	}
	content := batchLines(2)
	for _, c := range []struct{ name, body, param string }{
		{"long filename", part(`name="purpose"`, "batch") + part(`name="file"; filename="`+strings.Repeat("a", 256)+`"`, content), "file"},
		{"plain file field", part(`name="purpose"`, "batch") + part(`name="file"`, content), "file"},
		{"purpose twice", part(`name="purpose"`, "fine-tune") + part(`name="file"; filename="in.jsonl"`, content) + part(`name="purpose"`, "batch"), "purpose"},
	} {
		r := e.do(http.MethodPost, "/v1/files", testRoot, strings.NewReader(c.body+"--"+cutBoundary+"--\r\n"),
			"Content-Type", "multipart/form-data; boundary="+cutBoundary)
		er := r.wantError(t, http.StatusBadRequest, typeInvalidRequest, codeInvalidValue)
		if er["param"] != c.param {
			t.Errorf("%s: param %v, want %s", c.name, er["param"], c.param)
		}
		if c.name != "purpose twice" {
			wantNothingStored(t, e, b, c.name)
		} else if snap := e.b.snapshot(); snap != "" {
			t.Fatalf("%s: state changed: %s", c.name, snap)
		}
	}
	// A 255-byte name is fine.
	body := part(`name="purpose"`, "batch") + part(`name="file"; filename="`+strings.Repeat("a", 255)+`"`, content) + "--" + cutBoundary + "--\r\n"
	if r := e.do(http.MethodPost, "/v1/files", testRoot, strings.NewReader(body), "Content-Type", "multipart/form-data; boundary="+cutBoundary); r.status != 200 {
		t.Fatalf("255-byte filename: %d %s", r.status, r.body)
	}
}

// TestUploadPartHeaderCapped: a form part whose header passes 16 KiB is a
// 400, refused as it streams in, not read into memory (mime/multipart
// alone takes up to 10 MiB per part header); a header just under the cap,
// before or after the file, is fine.
func TestUploadPartHeaderCapped(t *testing.T) {
	e := rootEnv(t)
	part := func(header, value string) string {
		return "--" + cutBoundary + "\r\n" + header + "\r\n\r\n" + value + "\r\n"
	}
	form := func(extra string) string {
		return part(`Content-Disposition: form-data; name="purpose"`, "batch") + extra +
			part(`Content-Disposition: form-data; name="file"; filename="in.jsonl"`, batchLines(1)) + "--" + cutBoundary + "--\r\n"
	}
	post := func(body string) response {
		return e.do(http.MethodPost, "/v1/files", testRoot, strings.NewReader(body), "Content-Type", "multipart/form-data; boundary="+cutBoundary)
	}
	pad := func(n int) string {
		return "Content-Disposition: form-data; name=\"note\"\r\nX-Pad: " + strings.Repeat("a", n)
	}
	if r := post(form(part(pad(15<<10), "x"))); r.status != http.StatusOK {
		t.Fatalf("a 15 KiB part header: %d %s", r.status, r.body)
	}
	huge := form(part(pad(9<<20), "x")) // within the body cap
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := post(huge)
	runtime.ReadMemStats(&after)
	er := r.wantError(t, http.StatusBadRequest, typeInvalidRequest, codeInvalidValue)
	if er["param"] != nil || !strings.Contains(er["message"].(string), "header") {
		t.Fatalf("error %v", er)
	}
	// Reading the header into memory took tens of MiB.
	if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
		t.Fatalf("a refused 9 MiB part header allocated %d bytes", n)
	}
	if snap := e.b.snapshot(); strings.Count(snap, "file-") != 1 {
		t.Fatalf("state: %s", snap)
	}
}
