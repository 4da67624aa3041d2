package api

import (
	"cmp"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Page sizes of GET /v1/files, as OpenAI's.
const (
	defaultFileLimit = 10000
	maxFileLimit     = 10000
)

// downloadWriteTimeout bounds each write of a file's content to the client:
// a client that stops reading is cut off after it, instead of holding the
// file open and its buffers for good. A variable so tests can shorten it.
var downloadWriteTimeout = 30 * time.Second

// listFiles serves GET /v1/files: the project's files ordered by created_at
// then id (order=desc by default, as OpenAI), optionally of one purpose,
// after an exclusive cursor.
func (a *API) listFiles(w http.ResponseWriter, r *http.Request, p *principal) error {
	q := r.URL.Query()
	limit, err := parseLimit(q.Get("limit"), defaultFileLimit, maxFileLimit)
	if err != nil {
		return err
	}
	order := q.Get("order")
	switch order {
	case "":
		order = "desc"
	case "asc", "desc":
	default:
		return invalidValue("order", "Invalid value for 'order': %q; supported: 'asc', 'desc'.", order)
	}
	purpose, after := q.Get("purpose"), q.Get("after")
	if err := a.consistent(r); err != nil {
		return err
	}
	// Under the read lock (every raft apply waits for it) the list only
	// gathers the project's files; it sorts and pages outside. That is
	// safe because no command changes a stored File (fsm.State.Files).
	var files []*vbatchv1.File
	var cursor *vbatchv1.File
	now := a.b.Now().Unix()
	a.b.FSM().View(func(s *fsm.State) {
		for _, f := range s.Files {
			if f.Project == p.project && (purpose == "" || f.Purpose == purpose) && !fsm.FileExpired(f, now) {
				files = append(files, f)
			}
		}
		// The cursor is looked up among all the project's files, so that a
		// cursor the list leaves out (it expired since the last page, or
		// has another purpose) still gives the place to go on from; then
		// among the project's files deleted in the last day (FSM level 9),
		// so deleting files while paging through them, or the leader
		// deleting an expired one, does not break the paging. Another
		// project's file, live or deleted, is as unknown as no file.
		if f, ok := s.Files[after]; ok && f.Project == p.project {
			cursor = f
		} else if t, ok := s.FileTombstones[after]; ok && t.Project == p.project {
			cursor = &vbatchv1.File{Id: t.Id, CreatedAt: t.CreatedAt}
		}
	})
	byPosition := func(x, y *vbatchv1.File) int {
		c := cmp.Or(cmp.Compare(x.CreatedAt, y.CreatedAt), cmp.Compare(x.Id, y.Id))
		if order == "desc" {
			return -c
		}
		return c
	}
	slices.SortFunc(files, byPosition)
	page, hasMore, err := pageAfter(files, after, cursor != nil, limit, func(f *vbatchv1.File) bool { return byPosition(f, cursor) > 0 })
	if err != nil {
		return err
	}
	out := listObject[fileObject]{Object: "list", Data: make([]fileObject, len(page)), HasMore: hasMore}
	for i, f := range page {
		out.Data[i] = toFileObject(f)
	}
	if len(page) > 0 {
		first, last := page[0].Id, page[len(page)-1].Id
		out.FirstID, out.LastID = &first, &last
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// lookupFile returns a copy of the file id of p's project; a file of
// another project, or one past its expiry, is as missing as one that never
// existed.
func (a *API) lookupFile(r *http.Request, p *principal, id string) (*vbatchv1.File, error) {
	if err := a.consistent(r); err != nil {
		return nil, err
	}
	var f *vbatchv1.File
	now := a.b.Now().Unix()
	err := a.find(r, func(s *fsm.State) bool {
		if got, ok := s.Files[id]; ok && got.Project == p.project && !fsm.FileExpired(got, now) {
			f = proto.Clone(got).(*vbatchv1.File)
		}
		return f != nil
	})
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, fileNotFound(id)
	}
	return f, nil
}

// getFile serves GET /v1/files/{id}.
func (a *API) getFile(w http.ResponseWriter, r *http.Request, p *principal) error {
	f, err := a.lookupFile(r, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toFileObject(f))
	return nil
}

// fileContent serves GET /v1/files/{id}/content, streaming the bytes.
func (a *API) fileContent(w http.ResponseWriter, r *http.Request, p *principal) error {
	f, err := a.lookupFile(r, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	rc, err := a.b.OpenFile(r.Context(), f)
	if err != nil {
		return fmt.Errorf("open file %s: %w", f.Id, err)
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(f.Bytes, 10))
	w.WriteHeader(http.StatusOK)
	// net/http clears the deadline once the response is finished (its last
	// bytes flushed under the last one set), before the next request.
	dw := &deadlineWriter{w: w, rc: http.NewResponseController(w), d: downloadWriteTimeout}
	if n, err := io.Copy(dw, rc); err != nil || n != f.Bytes {
		// The status is sent: the short body (against Content-Length) is
		// how the client learns of the failure.
		a.log.Error("file content cut short", "request_id", r.Header.Get(requestIDHeader), "file", f.Id,
			"sent", n, "bytes", f.Bytes, "err", err)
	}
	return nil
}

// deadlineChunk is the most a deadlineWriter hands on under one deadline.
const deadlineChunk = 32 << 10

// deadlineWriter gives each write to the client, of at most deadlineChunk
// bytes whatever the size its source writes in, d to complete, so the
// deadline follows progress: a slow reader that keeps reading is served to
// the end, one that stops is cut off.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
	d  time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		// A writer without deadlines (not a net/http server's) is written
		// without one.
		_ = d.rc.SetWriteDeadline(time.Now().Add(d.d))
		k, err := d.w.Write(p[n:min(len(p), n+deadlineChunk)])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// deleteFile serves DELETE /v1/files/{id}; 409 while a live batch uses it.
func (a *API) deleteFile(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	var found, inUse bool
	now := a.b.Now().Unix()
	err := a.find(r, func(s *fsm.State) bool {
		if f, ok := s.Files[id]; ok && f.Project == p.project && !fsm.FileExpired(f, now) {
			found, inUse = true, fsm.UsedByLiveBatch(s, id)
		}
		return found
	})
	if err != nil {
		return err
	}
	if !found {
		return fileNotFound(id)
	}
	if inUse {
		return conflict("File %s is the input of a batch that has not ended; cancel the batch or wait for it to end.", id)
	}
	// From level 9 the delete keeps the file's list position (a cursor
	// naming it goes on after it); an older server would stop on the field.
	cmd := &vbatchv1.DeleteFile{Id: id, Project: p.project, KeepPosition: a.b.AtFSMLevel(fsm.LevelFileTombstones)}
	if _, err := a.b.Apply(r.Context(), cmd); err != nil {
		ae := toAPIError(err)
		if ae.status == http.StatusNotFound {
			return fileNotFound(id)
		}
		return fmt.Errorf("delete file %s: %w", id, err)
	}
	writeJSON(w, http.StatusOK, fileDeleted{ID: id, Object: "file", Deleted: true})
	return nil
}

// parseLimit reads a page size in [1, max].
func parseLimit(s string, def, max int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, invalidValue("limit", "Invalid value for 'limit': %q; it must be an integer between 1 and %d.", s, max)
	}
	return n, nil
}

// pageAfter is paginate for a list sorted by position whose cursor may be
// missing from it: the page starts at the first item past the cursor
// (past turns from false to true along the list). known tells whether
// after names an object with a position; an unknown cursor is refused.
func pageAfter[T any](items []T, after string, known bool, limit int, past func(T) bool) ([]T, bool, error) {
	start := 0
	if after != "" {
		if !known {
			return nil, false, invalidValue("after", "Invalid value for 'after': %q is not an object of this list.", after)
		}
		start = len(items)
		if i := slices.IndexFunc(items, past); i >= 0 {
			start = i
		}
	}
	end := min(start+limit, len(items))
	return items[start:end], end < len(items), nil
}

// paginate returns the page of at most limit items after the item with id
// after (exclusive) and whether more follow. An after that names no listed
// item is an error: the ids carry no order to resume from.
func paginate[T any](items []T, id func(T) string, after string, limit int) ([]T, bool, error) {
	start := 0
	if after != "" {
		start = -1
		for i, it := range items {
			if id(it) == after {
				start = i + 1
				break
			}
		}
		if start < 0 {
			return nil, false, invalidValue("after", "Invalid value for 'after': %q is not an object of this list.", after)
		}
	}
	end := min(start+limit, len(items))
	return items[start:end], end < len(items), nil
}
