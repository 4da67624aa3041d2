package cli

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fileBody = `{"id":"file-abc","object":"file","bytes":2048,"created_at":1795780800,"expires_at":null,"filename":"input.jsonl","purpose":"batch","status":"processed","status_details":null}`

const fileTable = `ID        PURPOSE  SIZE     FILENAME     CREATED
file-abc  batch    2.0 KiB  input.jsonl  2026-11-27 12:00:00Z
`

// uploadHandler reads an upload as the coordinator does, part by part,
// checks that it was streamed with the purpose first, and answers a File
// object with the size and hash of what it received.
func uploadHandler(t *testing.T, wantPurpose string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != -1 {
			t.Errorf("upload sent with Content-Length %d: the body was buffered, not streamed", r.ContentLength)
		}
		mr, err := r.MultipartReader()
		if err != nil {
			t.Errorf("multipart: %v", err)
			writeBody(w, 400, openAIError("not multipart", "invalid_request_error", "invalid_value"))
			return
		}
		part, err := mr.NextPart()
		if err != nil || part.FormName() != "purpose" {
			t.Errorf("first part = %v, %v; want the purpose field", part, err)
			return
		}
		purpose, _ := io.ReadAll(part)
		if string(purpose) != wantPurpose {
			t.Errorf("purpose = %q, want %q", purpose, wantPurpose)
		}
		part, err = mr.NextPart()
		if err != nil || part.FormName() != "file" {
			t.Errorf("second part = %v, %v; want the file", part, err)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, part)
		if err != nil {
			t.Errorf("read file part: %v", err)
		}
		if _, err := mr.NextPart(); err != io.EOF {
			t.Errorf("after the file part: %v, want EOF", err)
		}
		writeBody(w, 200, fmt.Sprintf(`{"id":"file-up","object":"file","bytes":%d,"created_at":1795780800,"filename":%q,"purpose":%q,"status":"processed","sha256":"%x"}`,
			n, part.FileName(), purpose, h.Sum(nil)))
	}
}

// writeInput writes n bytes of JSONL-looking content to a file in dir.
func writeInput(t *testing.T, dir string, n int) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	for i := 0; buf.Len() < n; i++ {
		fmt.Fprintf(&buf, `{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{}}`+"\n", i)
	}
	data := buf.Bytes()[:n]
	path := filepath.Join(dir, "input.jsonl")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func TestFilesUploadStreams(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "batch"))
	// Larger than any pipe or socket buffer on the way.
	path, data := writeInput(t, t.TempDir(), 3<<20+17)

	r := f.run("files", "upload", path, "-o", "json").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/files", "")
	if !strings.HasPrefix(req.ContentType, "multipart/form-data; boundary=") {
		t.Errorf("Content-Type = %q", req.ContentType)
	}
	want := fmt.Sprintf(`{"id":"file-up","object":"file","bytes":%d,"created_at":1795780800,"filename":"input.jsonl","purpose":"batch","status":"processed","sha256":"%x"}`,
		len(data), sha256.Sum256(data))
	checkSameJSON(t, r.stdout, want)
}

func TestFilesUploadTableAndPurpose(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", uploadHandler(t, "user_data"))
	path, _ := writeInput(t, t.TempDir(), 100)
	r := f.run("files", "upload", path, "--purpose", "user_data").ok(t)
	checkLines(t, r.stdout, `ID       PURPOSE    SIZE   FILENAME     CREATED
file-up  user_data  100 B  input.jsonl  2026-11-27 12:00:00Z
`)
}

func TestFilesUploadRefused(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/files", func(w http.ResponseWriter, r *http.Request) {
		// Read the whole form, as the coordinator does before it checks
		// the batch file's content, then refuse it.
		_, _ = io.Copy(io.Discard, r.Body)
		writeBody(w, 400, openAIError("The file is empty; a batch input file holds one JSON request per line.", "invalid_request_error", "invalid_file"))
	})
	path := filepath.Join(t.TempDir(), "empty.jsonl")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := f.run("files", "upload", path)
	if r.code != 1 || r.stderr != "Error: The file is empty; a batch input file holds one JSON request per line. (HTTP 400, invalid_file)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestFilesUploadRefusedEarly(t *testing.T) {
	// The server answers before it read the file part: the upload must
	// end at once with an error rather than block on the pipe.
	f := newFakeServer(t)
	f.handle("POST /v1/files", func(w http.ResponseWriter, _ *http.Request) {
		writeBody(w, 400, openAIError("Invalid purpose.", "invalid_request_error", "invalid_value"))
	})
	path, _ := writeInput(t, t.TempDir(), 4<<20)
	r := f.run("files", "upload", path, "--purpose", "nope")
	if r.code != 1 || r.stderr != "Error: Invalid purpose. (HTTP 400, invalid_value)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestFilesUploadMissingFile(t *testing.T) {
	r := runEnv(t, t.Context(), "--addr", "127.0.0.1:1", "files", "upload", filepath.Join(t.TempDir(), "nope.jsonl"))
	if r.code != 1 || !strings.Contains(r.stderr, "no such file or directory") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestFilesList(t *testing.T) {
	f := newFakeServer(t)
	body := `{"object":"list","data":[` + fileBody + `],"first_id":"file-abc","last_id":"file-abc","has_more":true}`
	f.reply("GET /v1/files", 200, body)

	r := f.run("files", "list", "--purpose", "batch", "--limit", "1", "--after", "file-0").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/files", "after=file-0&limit=1&purpose=batch")
	checkLines(t, r.stdout, fileTable)
	if r.stderr != "More files: vbctl files list --after file-abc\n" {
		t.Errorf("stderr = %q", r.stderr)
	}

	r = f.run("files", "list", "-o", "json").ok(t)
	checkRequest(t, f.requests()[1], "GET", "/v1/files", "")
	checkSameJSON(t, r.stdout, body)
}

func TestFilesGet(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/files/{id}", 200, fileBody)
	r := f.run("files", "get", "file-abc").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/files/file-abc", "")
	checkLines(t, r.stdout, fileTable)
	r = f.run("-o", "json", "files", "get", "file-abc").ok(t)
	checkSameJSON(t, r.stdout, fileBody)
}

func TestFilesDownload(t *testing.T) {
	f := newFakeServer(t)
	content := strings.Repeat(`{"id":"batch_req_1","custom_id":"r1","response":{"status_code":200}}`+"\n", 5000)
	f.handle("GET /v1/files/{id}/content", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "file-out" {
			writeBody(w, 404, openAIError("No such File object: "+r.PathValue("id"), "invalid_request_error", "not_found"))
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.WriteString(w, content)
	})

	r := f.run("files", "download", "file-out").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/files/file-out/content", "")
	if r.stdout != content {
		t.Errorf("stdout has %d bytes, want the %d of the file", len(r.stdout), len(content))
	}

	out := filepath.Join(t.TempDir(), "out.jsonl")
	r = f.run("files", "download", "file-out", "-f", out).ok(t)
	if got, err := os.ReadFile(out); err != nil || string(got) != content {
		t.Errorf("%s: %d bytes, %v; want the %d of the file", out, len(got), err, len(content))
	}
	if r.stdout != "" || !strings.Contains(r.stderr, "Wrote "+out) {
		t.Errorf("stdout %q, stderr %q", r.stdout, r.stderr)
	}

	missing := filepath.Join(t.TempDir(), "missing.jsonl")
	r = f.run("files", "download", "file-nope", "-f", missing)
	if r.code != 1 || r.stderr != "Error: No such File object: file-nope (HTTP 404, not_found)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("a failed download left %s: %v", missing, err)
	}
}

func TestFilesDelete(t *testing.T) {
	f := newFakeServer(t)
	body := `{"id":"file-abc","object":"file","deleted":true}`
	f.reply("DELETE /v1/files/{id}", 200, body)
	r := f.run("files", "delete", "file-abc").ok(t)
	checkRequest(t, f.only(), "DELETE", "/v1/files/file-abc", "")
	if r.stdout != "Deleted file-abc\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("files", "delete", "file-abc", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, body)
}

// TestFilesDownloadToDirectoryRefused: a target that is a directory is
// refused before anything is transferred.
func TestFilesDownloadToDirectoryRefused(t *testing.T) {
	f := newFakeServer(t)
	dir := t.TempDir()
	r := f.run("files", "download", "file-abc", "-f", dir)
	if r.code == 0 || !strings.Contains(r.stderr, "is a directory") {
		t.Fatalf("exit %d, stderr %q: want the directory refused", r.code, r.stderr)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("%d requests sent: %+v", n, f.requests())
	}
}
