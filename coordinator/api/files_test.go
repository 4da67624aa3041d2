package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/coordinator/validate"
	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestUploadPurposeEitherOrder(t *testing.T) {
	e := rootEnv(t)
	content := batchLines(3)
	for name, fields := range map[string][]field{
		"purpose first": {{name: "purpose", value: "batch"}, {name: "file", filename: "a.jsonl", value: content}},
		"purpose after": {{name: "file", filename: "a.jsonl", value: content}, {name: "purpose", value: "batch"}},
	} {
		t.Run(name, func(t *testing.T) {
			r := e.upload(testRoot, fields...)
			if r.status != http.StatusOK {
				t.Fatalf("%d %s", r.status, r.body)
			}
			m := r.json(t)
			if m["object"] != "file" || m["purpose"] != "batch" || m["filename"] != "a.jsonl" ||
				m["bytes"] != float64(len(content)) || m["status"] != "processed" || m["created_at"] != float64(1_700_000_000) {
				t.Fatalf("file object %v", m)
			}
			id := m["id"].(string)
			if !strings.HasPrefix(id, "file-") || len(id) != len("file-")+24 {
				t.Fatalf("id %q", id)
			}
			var lines int64
			var parts int
			e.b.f.View(func(s *fsm.State) {
				f := s.Files[id]
				lines, parts = f.Lines, len(f.Parts)
				if f.Project != "default" || f.Sha256 == "" || len(f.Replicas) != 2 {
					t.Errorf("stored %v", f)
				}
			})
			if lines != 3 || parts != 1 {
				t.Fatalf("lines %d parts %d", lines, parts)
			}
		})
	}
}

func TestUploadErrors(t *testing.T) {
	e := newEnv(t, Config{RootKey: testRoot, MaxUploadBytes: 1000, Validate: validate.Options{MaxRequests: 2}})
	good := batchLines(1)
	cases := []struct {
		name   string
		fields []field
		status int
		code   string
		param  string
	}{
		{"no file", []field{{name: "purpose", value: "batch"}}, 400, codeMissingParam, "file"},
		{"no purpose", []field{{name: "file", filename: "a", value: good}}, 400, codeMissingParam, "purpose"},
		{"bad purpose first", []field{{name: "purpose", value: "batch_output"}, {name: "file", filename: "a", value: good}}, 400, codeInvalidValue, "purpose"},
		{"bad purpose after", []field{{name: "file", filename: "a", value: good}, {name: "purpose", value: "nope"}}, 400, codeInvalidValue, "purpose"},
		{"two files", []field{{name: "file", filename: "a", value: good}, {name: "file", filename: "b", value: good}}, 400, codeInvalidValue, "file"},
		{"empty batch file", []field{{name: "purpose", value: "batch"}, {name: "file", filename: "a", value: ""}}, 400, codeInvalidFile, "file"},
		{"too many requests", []field{{name: "purpose", value: "batch"}, {name: "file", filename: "a", value: batchLines(3)}}, 400, codeInvalidFile, "file"},
		{"too large", []field{{name: "purpose", value: "batch"}, {name: "file", filename: "a", value: strings.Repeat("x", 1001)}}, 413, codeFileTooLarge, "file"},
		{"bad expiry anchor", []field{{name: "purpose", value: "batch"}, {name: "expires_after[anchor]", value: "now"}, {name: "expires_after[seconds]", value: "3600"}, {name: "file", filename: "a", value: good}}, 400, codeInvalidValue, "expires_after[anchor]"},
		{"bad expiry seconds", []field{{name: "purpose", value: "batch"}, {name: "expires_after[anchor]", value: "created_at"}, {name: "expires_after[seconds]", value: "10"}, {name: "file", filename: "a", value: good}}, 400, codeInvalidValue, "expires_after[seconds]"},
		{"expiry not a number", []field{{name: "expires_after[seconds]", value: "soon"}}, 400, codeInvalidValue, "expires_after[seconds]"},
		{"oversized field", []field{{name: "purpose", value: strings.Repeat("b", 5000)}}, 400, codeInvalidValue, "purpose"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.b.snapshot()
			r := e.upload(testRoot, tc.fields...)
			er := r.wantError(t, tc.status, typeInvalidRequest, tc.code)
			if er["param"] != tc.param {
				t.Fatalf("param %v, want %s", er["param"], tc.param)
			}
			if after := e.b.snapshot(); after != before {
				t.Fatalf("state changed: %s -> %s", before, after)
			}
		})
	}
	if n := e.b.blobCount(); n > 6 {
		// Only the cases that were refused after the file part streamed
		// stored a blob (orphans the blob GC collects); the oversize one,
		// the refused-purpose-first one and those without a file did not.
		t.Fatalf("%d blobs stored", n)
	}
}

func TestUploadOversizeStoresNothing(t *testing.T) {
	e := newEnv(t, Config{RootKey: testRoot, MaxUploadBytes: 1 << 10})
	r := e.upload(testRoot, field{name: "purpose", value: "batch"}, field{name: "file", filename: "a", value: strings.Repeat("y", 1<<12)})
	r.wantError(t, http.StatusRequestEntityTooLarge, typeInvalidRequest, codeFileTooLarge)
	if n := e.b.blobCount(); n != 0 {
		t.Fatalf("%d blobs stored", n)
	}
	// Exactly the maximum is fine.
	r = e.upload(testRoot, field{name: "purpose", value: "user_data"}, field{name: "file", filename: "a", value: strings.Repeat("y", 1<<10)})
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// A declared length far over the cap is refused before reading.
	body, ct := multipartBody(t, field{name: "file", filename: "a", value: strings.Repeat("z", 1<<16)})
	r = e.do(http.MethodPost, "/v1/files", testRoot, body, "Content-Type", ct)
	r.wantError(t, http.StatusRequestEntityTooLarge, typeInvalidRequest, codeFileTooLarge)
}

func TestUploadNotMultipart(t *testing.T) {
	e := rootEnv(t)
	r := e.postJSON("/v1/files", testRoot, map[string]string{"purpose": "batch"})
	r.wantError(t, http.StatusBadRequest, typeInvalidRequest, codeInvalidValue)
	r = e.do(http.MethodPost, "/v1/files", testRoot, strings.NewReader("--x\r\nnot a part"), "Content-Type", "multipart/form-data; boundary=x")
	r.wantError(t, http.StatusBadRequest, typeInvalidRequest, codeInvalidValue)
}

// uploadExpiring uploads a one-line batch file that expires seconds after
// its creation and fails the test unless the upload succeeds.
func uploadExpiring(t *testing.T, e *env, seconds int) response {
	t.Helper()
	r := e.upload(testRoot, field{name: "purpose", value: "batch"}, field{name: "expires_after[anchor]", value: "created_at"},
		field{name: "expires_after[seconds]", value: strconv.Itoa(seconds)}, field{name: "file", filename: "a", value: batchLines(1)})
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	return r
}

func TestUploadExpiry(t *testing.T) {
	e := rootEnv(t)
	r := uploadExpiring(t, e, 7200)
	if got := r.json(t)["expires_at"]; got != float64(1_700_000_000+7200) {
		t.Fatalf("expires_at %v", got)
	}
}

// TestExpiredFileReadsAsDeleted: from its expires_at on, a file is gone
// for every endpoint, as at OpenAI, before the leader deletes its record.
func TestExpiredFileReadsAsDeleted(t *testing.T) {
	e := rootEnv(t)
	id := uploadExpiring(t, e, 3600).json(t)["id"].(string)
	kept := e.uploadOK(testRoot, "batch", batchLines(1))
	e.b.advance(3600 * time.Second)
	e.do(http.MethodGet, "/v1/files/"+id, testRoot, nil).wantError(t, http.StatusNotFound, typeInvalidRequest, codeNotFound)
	e.do(http.MethodGet, "/v1/files/"+id+"/content", testRoot, nil).wantError(t, http.StatusNotFound, typeInvalidRequest, codeNotFound)
	e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil).wantError(t, http.StatusNotFound, typeInvalidRequest, codeNotFound)
	body := fmt.Sprintf(`{"input_file_id":%q,"endpoint":"/v1/chat/completions","completion_window":"24h"}`, id)
	e.do(http.MethodPost, "/v1/batches", testRoot, strings.NewReader(body)).wantError(t, http.StatusNotFound, typeInvalidRequest, codeNotFound)
	list := e.do(http.MethodGet, "/v1/files", testRoot, nil)
	if list.status != http.StatusOK || strings.Contains(string(list.body), id) || !strings.Contains(string(list.body), kept) {
		t.Fatalf("list after expiry: %d %s", list.status, list.body)
	}
}

func TestUploadStoreFailure(t *testing.T) {
	e := rootEnv(t)
	e.b.storeErr = fmt.Errorf("replicate: %w", ErrUnavailable)
	r := e.upload(testRoot, field{name: "purpose", value: "batch"}, field{name: "file", filename: "a", value: batchLines(1)})
	r.wantError(t, http.StatusServiceUnavailable, typeServer, codeUnavailable)
	e.b.storeErr = fmt.Errorf("ingest: %w", ErrInsufficientStorage)
	r = e.upload(testRoot, field{name: "purpose", value: "batch"}, field{name: "file", filename: "a", value: batchLines(1)})
	r.wantError(t, http.StatusInsufficientStorage, typeServer, "insufficient_storage")
	e.b.storeErr = nil
	e.b.applyErr = fmt.Errorf("disk: %w", errTestBoom)
	r = e.upload(testRoot, field{name: "purpose", value: "batch"}, field{name: "file", filename: "a", value: batchLines(1)})
	r.wantError(t, http.StatusInternalServerError, typeServer, codeInternal)
	if strings.Contains(string(r.body), "boom") {
		t.Fatalf("internal cause leaked: %s", r.body)
	}
}

var errTestBoom = fmt.Errorf("boom")

// TestUploadHoldsBlobBeforeCommit: the upload re-confirms its blob just
// before the file's record commits; bytes lost since they were stored (GC
// while the rest of a slow body arrived) make it a 503 that commits
// nothing, not a file without content.
func TestUploadHoldsBlobBeforeCommit(t *testing.T) {
	e := rootEnv(t)
	e.uploadOK(testRoot, "batch", batchLines(1))
	if e.b.holdCalls != 1 {
		t.Fatalf("HoldBlob called %d times for one upload, want 1", e.b.holdCalls)
	}
	applied := e.b.applied
	e.b.onStore = func() {
		e.b.mu.Lock()
		clear(e.b.blobs)
		e.b.mu.Unlock()
	}
	r := e.upload(testRoot, field{name: "purpose", value: "batch"}, field{name: "file", filename: "a", value: batchLines(2)})
	r.wantError(t, http.StatusServiceUnavailable, typeServer, codeUnavailable)
	if e.b.applied != applied {
		t.Fatalf("a refused upload committed %d commands", e.b.applied-applied)
	}
}

func TestGetFileAndContent(t *testing.T) {
	e := rootEnv(t)
	content := batchLines(2)
	id := e.uploadOK(testRoot, "batch", content)
	r := e.do(http.MethodGet, "/v1/files/"+id, testRoot, nil)
	if r.status != 200 || r.json(t)["id"] != id {
		t.Fatalf("%d %s", r.status, r.body)
	}
	r = e.do(http.MethodGet, "/v1/files/"+id+"/content", testRoot, nil)
	if r.status != 200 || string(r.body) != content {
		t.Fatalf("%d %q", r.status, r.body)
	}
	if r.header.Get("Content-Length") != strconv.Itoa(len(content)) || r.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("headers %v", r.header)
	}
	for _, p := range []string{"/v1/files/file-missing", "/v1/files/file-missing/content"} {
		er := e.do(http.MethodGet, p, testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
		if er["message"] != "No such File object: file-missing" || er["param"] != "id" {
			t.Fatalf("error %v", er)
		}
	}
}

func TestDeleteFile(t *testing.T) {
	e := rootEnv(t)
	id := e.uploadOK(testRoot, "batch", batchLines(1))
	bid := e.batchOK(testRoot, id)
	before := e.b.snapshot()
	e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil).wantError(t, http.StatusConflict, typeInvalidRequest, codeConflict)
	if e.b.snapshot() != before {
		t.Fatal("refused delete changed state")
	}
	startBatch(t, e, bid, 1)
	if r := e.do(http.MethodPost, "/v1/batches/"+bid+"/cancel", testRoot, nil); r.status != 200 {
		t.Fatalf("cancel: %d %s", r.status, r.body)
	}
	// Still in use while cancelling.
	e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil).wantError(t, http.StatusConflict, typeInvalidRequest, codeConflict)
	finishCancel(t, e, bid)
	r := e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	m := r.json(t)
	if m["id"] != id || m["object"] != "file" || m["deleted"] != true {
		t.Fatalf("%v", m)
	}
	e.do(http.MethodGet, "/v1/files/"+id, testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
	e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil).wantError(t, 404, typeInvalidRequest, codeNotFound)
}

func TestListFilesPagination(t *testing.T) {
	e := rootEnv(t)
	var ids []string
	for i := range 5 {
		purpose := "batch"
		if i == 2 {
			purpose = "user_data"
		}
		ids = append(ids, e.uploadOK(testRoot, purpose, batchLines(1)))
		e.b.advance(time.Second)
	}
	page := func(q string) (got []string, hasMore bool, first, last any) {
		r := e.do(http.MethodGet, "/v1/files"+q, testRoot, nil)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", q, r.status, r.body)
		}
		m := r.json(t)
		if m["object"] != "list" {
			t.Fatalf("%v", m)
		}
		for _, d := range m["data"].([]any) {
			got = append(got, d.(map[string]any)["id"].(string))
		}
		return got, m["has_more"].(bool), m["first_id"], m["last_id"]
	}
	// Default order is newest first.
	got, more, first, last := page("")
	if fmt.Sprint(got) != fmt.Sprint([]string{ids[4], ids[3], ids[2], ids[1], ids[0]}) || more || first != ids[4] || last != ids[0] {
		t.Fatalf("desc: %v %v %v %v", got, more, first, last)
	}
	// Ascending, two at a time, following the cursor.
	var all []string
	cursor := ""
	for {
		q := "?order=asc&limit=2"
		if cursor != "" {
			q += "&after=" + cursor
		}
		got, more, _, last := page(q)
		all = append(all, got...)
		if !more {
			break
		}
		cursor = last.(string)
	}
	if fmt.Sprint(all) != fmt.Sprint(ids) {
		t.Fatalf("asc pages %v, want %v", all, ids)
	}
	got, _, _, _ = page("?purpose=user_data")
	if fmt.Sprint(got) != fmt.Sprint([]string{ids[2]}) {
		t.Fatalf("purpose filter %v", got)
	}
	got, more, first, last = page("?purpose=fine-tune")
	if len(got) != 0 || more || first != nil || last != nil {
		t.Fatalf("empty page %v %v %v %v", got, more, first, last)
	}
	// A cursor the filtered list leaves out still gives its place: paging
	// batch files from the user_data one goes on after it.
	got, _, _, _ = page("?order=asc&purpose=batch&after=" + ids[2])
	if fmt.Sprint(got) != fmt.Sprint([]string{ids[3], ids[4]}) {
		t.Fatalf("after a cursor of another purpose: %v, want %v", got, ids[3:])
	}
	for _, q := range []string{"?limit=0", "?limit=10001", "?limit=x", "?order=up", "?after=file-nope"} {
		e.do(http.MethodGet, "/v1/files"+q, testRoot, nil).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
	}
}

// TestListFilesAfterExpiredCursor: a page's last file expiring before the
// next page is asked for does not break the paging.
func TestListFilesAfterExpiredCursor(t *testing.T) {
	e := rootEnv(t)
	var ids []string
	for i := range 3 {
		if i == 1 {
			ids = append(ids, uploadExpiring(t, e, 3600).json(t)["id"].(string))
		} else {
			ids = append(ids, e.uploadOK(testRoot, "batch", batchLines(1)))
		}
		e.b.advance(time.Second)
	}
	e.b.advance(2 * time.Hour) // ids[1] has expired
	r := e.do(http.MethodGet, "/v1/files?order=asc&after="+ids[1], testRoot, nil)
	if r.status != 200 {
		t.Fatalf("after an expired cursor: %d %s", r.status, r.body)
	}
	data := r.json(t)["data"].([]any)
	if len(data) != 1 || data[0].(map[string]any)["id"] != ids[2] {
		t.Fatalf("after an expired cursor: %s, want only %s", r.body, ids[2])
	}
}

// listIDs answers GET /v1/files?q with key: the ids listed, or the status
// and body of an error.
func listIDs(t *testing.T, e *env, key, q string) ([]string, response) {
	t.Helper()
	r := e.do(http.MethodGet, "/v1/files"+q, key, nil)
	if r.status != http.StatusOK {
		return nil, r
	}
	var ids []string
	for _, d := range r.json(t)["data"].([]any) {
		ids = append(ids, d.(map[string]any)["id"].(string))
	}
	return ids, r
}

// TestListFilesAfterDeletedCursor: a page's last file deleted before the
// next page is asked for (a cleanup script deleting files as it pages
// through them, the leader deleting an expired one) keeps its place; a
// deleted file of another project is as unknown as one that never was.
func TestListFilesAfterDeletedCursor(t *testing.T) {
	e := rootEnv(t)
	var ids []string
	for range 5 {
		ids = append(ids, e.uploadOK(testRoot, "batch", batchLines(1)))
		e.b.advance(time.Second)
	}
	// Page two at a time, deleting each page before asking for the next.
	var seen []string
	cursor := ""
	for {
		q := "?order=asc&limit=2"
		if cursor != "" {
			q += "&after=" + cursor
		}
		got, r := listIDs(t, e, testRoot, q)
		if r.status != http.StatusOK {
			t.Fatalf("%s after deleting the previous page: %d %s", q, r.status, r.body)
		}
		seen = append(seen, got...)
		if len(got) == 0 || !r.json(t)["has_more"].(bool) {
			break
		}
		cursor = got[len(got)-1]
		for _, id := range got {
			if d := e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil); d.status != http.StatusOK {
				t.Fatalf("delete %s: %d %s", id, d.status, d.body)
			}
		}
	}
	if fmt.Sprint(seen) != fmt.Sprint(ids) {
		t.Fatalf("paged %v, want %v", seen, ids)
	}

	// An expired file the leader deleted (as its sweep does) keeps its place.
	e2 := rootEnv(t)
	var ids2 []string
	for i := range 3 {
		if i == 1 {
			ids2 = append(ids2, uploadExpiring(t, e2, 3600).json(t)["id"].(string))
		} else {
			ids2 = append(ids2, e2.uploadOK(testRoot, "batch", batchLines(1)))
		}
		e2.b.advance(time.Second)
	}
	e2.b.advance(2 * time.Hour)
	if _, err := e2.b.Apply(context.Background(), &vbatchv1.DeleteFile{Id: ids2[1], KeepPosition: true}); err != nil {
		t.Fatal(err)
	}
	if got, r := listIDs(t, e2, testRoot, "?order=asc&after="+ids2[1]); fmt.Sprint(got) != fmt.Sprint(ids2[2:]) {
		t.Fatalf("after a swept expired cursor: %v %d %s", got, r.status, r.body)
	}
	if got, r := listIDs(t, e2, testRoot, "?after="+ids2[1]); fmt.Sprint(got) != fmt.Sprint(ids2[:1]) {
		t.Fatalf("desc after a swept expired cursor: %v %d %s", got, r.status, r.body)
	}

	// Another project's deleted file is no cursor: ids do not leak.
	other := e2.createKey("other", "batch")
	theirs := e2.uploadOK(other, "batch", batchLines(1))
	if d := e2.do(http.MethodDelete, "/v1/files/"+theirs, other, nil); d.status != http.StatusOK {
		t.Fatalf("delete: %d %s", d.status, d.body)
	}
	if _, r := listIDs(t, e2, other, "?after="+theirs); r.status != http.StatusOK {
		t.Fatalf("own deleted cursor: %d %s", r.status, r.body)
	}
	e2.do(http.MethodGet, "/v1/files?after="+theirs, testRoot, nil).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
}

// TestDeleteFileBelowLevel9 sends no keep_position while a server would
// not apply it: the deleted cursor is then refused, as before.
func TestDeleteFileBelowLevel9(t *testing.T) {
	e := rootEnv(t)
	e.b.level = fsm.LevelFileTombstones - 1
	var sent []*vbatchv1.DeleteFile
	e.b.onApply = func(cmd proto.Message) {
		if d, ok := cmd.(*vbatchv1.DeleteFile); ok {
			sent = append(sent, d)
		}
	}
	id := e.uploadOK(testRoot, "batch", batchLines(1))
	if d := e.do(http.MethodDelete, "/v1/files/"+id, testRoot, nil); d.status != http.StatusOK {
		t.Fatalf("delete: %d %s", d.status, d.body)
	}
	if len(sent) != 1 || sent[0].KeepPosition {
		t.Fatalf("below level 9 sent %v", sent)
	}
	e.do(http.MethodGet, "/v1/files?after="+id, testRoot, nil).wantError(t, 400, typeInvalidRequest, codeInvalidValue)
}

// TestUploadRecordsCheck: a valid batch file is validated while it streams
// in and keeps a check a batch can start from, whatever the field order;
// other files keep none.
func TestUploadRecordsCheck(t *testing.T) {
	e := rootEnv(t)
	good := batchLines(3)
	cases := []struct {
		name   string
		fields []field
		want   bool
	}{
		{"purpose first", []field{{name: "purpose", value: "batch"}, {name: "file", filename: "a.jsonl", value: good}}, true},
		{"purpose after", []field{{name: "file", filename: "a.jsonl", value: good}, {name: "purpose", value: "batch"}}, true},
		{"not batch", []field{{name: "file", filename: "a.jsonl", value: good}, {name: "purpose", value: "fine-tune"}}, false},
		{"invalid line", []field{{name: "purpose", value: "batch"}, {name: "file", filename: "a.jsonl", value: good + "{oops\n"}}, false},
		{"two endpoints", []field{{name: "purpose", value: "batch"}, {name: "file", filename: "a.jsonl",
			value: good + strings.NewReplacer("/v1/chat/completions", "/v1/embeddings", `"r0"`, `"x0"`).Replace(batchLines(1))}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.upload(testRoot, c.fields...)
			if r.status != http.StatusOK {
				t.Fatalf("%d %s", r.status, r.body)
			}
			id := r.json(t)["id"].(string)
			var f *vbatchv1.File
			e.b.f.View(func(s *fsm.State) { f = s.Files[id] })
			if !c.want {
				if f.Check != nil {
					t.Fatalf("check kept: %v", f.Check)
				}
				return
			}
			want, err := validate.Validate(strings.NewReader(good), "/v1/chat/completions", e.api.ValidateOptions())
			if err != nil {
				t.Fatal(err)
			}
			got, ok := validate.FromCheck(f.Check, "/v1/chat/completions", e.api.ValidateOptions())
			if !ok || got.Total != 3 || got.Model != want.Model || !slices.Equal(got.Chunks, want.Chunks) {
				t.Fatalf("check %v gives %+v, %v; want %+v", f.Check, got, ok, want)
			}
		})
	}
}

// closeSignalBackend tells when a handler let go of a file it opened.
type closeSignalBackend struct {
	*fakeBackend
	closed chan struct{}
}

func (b *closeSignalBackend) OpenFile(ctx context.Context, f *vbatchv1.File) (io.ReadCloser, error) {
	rc, err := b.fakeBackend.OpenFile(ctx, f)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{rc, closerFunc(func() error { close(b.closed); return rc.Close() })}, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// TestDownloadCutsOffStalledReader: a client that stops reading a file's
// content is cut off once a write makes no progress for the write timeout,
// instead of holding the file open for good.
func TestDownloadCutsOffStalledReader(t *testing.T) {
	orig := downloadWriteTimeout
	downloadWriteTimeout = 200 * time.Millisecond
	t.Cleanup(func() { downloadWriteTimeout = orig })
	b := &closeSignalBackend{fakeBackend: newFakeBackend(), closed: make(chan struct{})}
	a := New(b, Config{RootKey: testRoot, MaxUploadBytes: 64 << 20}, nil)
	e := &env{t: t, b: b.fakeBackend, api: a, srv: newServer(t, a)}
	// Far more than the socket buffers between the two ends hold.
	id := e.uploadOK(testRoot, "user_data", strings.Repeat("x", 48<<20))
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/files/%s/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", id, testRoot)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("download: %v %v", resp, err)
	}
	// Read no more of it.
	select {
	case <-b.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("a download the client stopped reading still holds its file")
	}
}

// TestDownloadSlowReaderServed: the write timeout follows progress: a client
// that reads slowly but steadily gets the whole file, though that takes
// longer than the timeout.
func TestDownloadSlowReaderServed(t *testing.T) {
	orig := downloadWriteTimeout
	downloadWriteTimeout = time.Second
	t.Cleanup(func() { downloadWriteTimeout = orig })
	e := newEnv(t, Config{RootKey: testRoot, MaxUploadBytes: 64 << 20})
	content := strings.Repeat("y", 32<<20)
	id := e.uploadOK(testRoot, "user_data", content)
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/files/"+id+"/content", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testRoot)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	var got int
	buf := make([]byte, 1<<20)
	for {
		// A MiB at a time with a pause between, far less than the timeout:
		// a server write waits for a few MiB to drain at most.
		n, err := io.ReadFull(resp.Body, buf)
		got += n
		if err == io.EOF || err == io.ErrUnexpectedEOF && got == len(content) {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		time.Sleep(downloadWriteTimeout / 24)
	}
	if got != len(content) {
		t.Fatalf("read %d bytes of %d", got, len(content))
	}
	if d := time.Since(start); d < downloadWriteTimeout {
		t.Fatalf("read in %v, within a single write timeout: nothing tested", d)
	}
}
