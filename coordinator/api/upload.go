package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/ids"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// uploadPurposes are the purposes a client may upload a file with, as
// OpenAI accepts them; batch_output is only ever made by a batch.
var uploadPurposes = map[string]bool{
	"assistants": true,
	"batch":      true,
	"fine-tune":  true,
	"vision":     true,
	"user_data":  true,
	"evals":      true,
}

// File expiry bounds of OpenAI's expires_after.
const (
	minFileExpiry = 3600
	maxFileExpiry = 30 * 24 * 3600
)

// maxFieldBytes caps a non-file form field.
const maxFieldBytes = 4 << 10

// formSlack is what an upload's body may hold beside the file: the other
// fields and the multipart framing.
const formSlack = maxFieldBytes * 8

// maxPartHeaderBytes caps what each form part's delimiter and header block
// may take. mime/multipart allows 10 MiB and reads it all into memory, so
// without this one request with a few huge part headers (within the body
// cap) allocated tens of megabytes.
const maxPartHeaderBytes = 16 << 10

// multipartReadAhead is what a multipart.Reader may read past a header
// (its buffer), counted in the header's cap.
const multipartReadAhead = 4 << 10

// errPartHeaderTooLarge is what the body returns to the multipart reader
// once a part's header passes its cap.
var errPartHeaderTooLarge = errors.New("form part header too large")

// headerLimit passes the body through, and while armed fails once more
// than its budget was read: armed around each NextPart, it bounds the
// bytes a part's header may make the multipart reader hold.
type headerLimit struct {
	r    io.Reader
	left int64 // < 0: not armed
	hit  bool
}

// arm starts counting a budget of n bytes; disarm stops.
func (h *headerLimit) arm(n int64) { h.left = n }
func (h *headerLimit) disarm()     { h.left = -1 }

func (h *headerLimit) Read(p []byte) (int, error) {
	if h.left < 0 {
		return h.r.Read(p)
	}
	if h.left == 0 {
		h.hit = true
		return 0, errPartHeaderTooLarge
	}
	n, err := h.r.Read(p[:min(int64(len(p)), h.left)])
	h.left -= int64(n)
	return n, err
}

// errUploadTooLarge is what the upload stream returns past the size cap, so
// that StoreUpload aborts without keeping anything.
var errUploadTooLarge = errors.New("file too large")

// uploadReader counts what flows from the file part into the blob store,
// and fails once more than max bytes went through, so that the store
// aborts and keeps nothing.
type uploadReader struct {
	r        io.Reader
	max      int64
	n        int64
	newlines int64
	last     byte
	tooLarge bool
	// requests counts the lines holding more than whitespace; content says
	// whether the current line does.
	requests int64
	content  bool
	// maxLine, when positive, is the longest line allowed (without its
	// '\n', as validate counts it); longLine is the 1-based number of the
	// first longer one, 0 if none; lineLen is the current line's length.
	maxLine  int64
	lineLen  int64
	longLine int64
	// tee, when set, gets every byte read.
	tee io.Writer
	// readErr is the part's read error other than io.EOF (a body cut
	// short, or past its cap): the client's fault, whatever the store
	// makes of it.
	readErr error
}

func (u *uploadReader) Read(p []byte) (int, error) {
	if u.tooLarge {
		return 0, errUploadTooLarge
	}
	// Read at most one byte past the cap to tell "exactly max" from "more".
	if room := u.max + 1 - u.n; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := u.r.Read(p)
	if err != nil && err != io.EOF && u.readErr == nil {
		u.readErr = err
	}
	u.n += int64(n)
	if n > 0 {
		u.count(p[:n])
		if u.tee != nil {
			_, _ = u.tee.Write(p[:n])
		}
	}
	if u.n > u.max {
		u.tooLarge = true
		return 0, fmt.Errorf("%w: over the maximum of %d bytes", errUploadTooLarge, u.max)
	}
	return n, err
}

func (u *uploadReader) count(b []byte) {
	u.last = b[len(b)-1]
	for len(b) > 0 {
		seg, rest, nl := bytes.Cut(b, []byte{'\n'})
		if !u.content && hasContent(seg) {
			u.content = true
		}
		u.lineLen += int64(len(seg))
		if u.maxLine > 0 && u.lineLen > u.maxLine && u.longLine == 0 {
			u.longLine = u.newlines + 1
		}
		if !nl {
			return
		}
		u.newlines++
		if u.content {
			u.requests++
		}
		u.content, u.lineLen = false, 0
		b = rest
	}
}

// hasContent reports whether b holds more than spaces, tabs and '\r'.
func hasContent(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r':
		default:
			return true
		}
	}
	return false
}

// nonBlank is the number of lines holding more than whitespace.
func (u *uploadReader) nonBlank() int64 {
	if u.content {
		return u.requests + 1
	}
	return u.requests
}

// lines is the number of lines read: newline-terminated ones and a final
// unterminated one.
func (u *uploadReader) lines() int64 {
	if u.n > 0 && u.last != '\n' {
		return u.newlines + 1
	}
	return u.newlines
}

// uploadFile serves POST /v1/files: a multipart form with the fields file
// and purpose, in either order. The file part streams into the blob store;
// the metadata is committed only after the whole request checked out.
//
// With a file bytes quota, the upload is refused with 429 before anything
// is read when its Content-Length cannot fit in the project's room, while
// streaming once it passes the room, and at the end when what the project
// holds by then leaves no room for it; a refusal commits nothing and the
// blob store's GC collects what was stored.
func (a *API) uploadFile(w http.ResponseWriter, r *http.Request, p *principal) error {
	if r.ContentLength > a.cfg.MaxUploadBytes+formSlack {
		return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge, param: "file",
			message: fmt.Sprintf("The file is larger than the maximum of %d bytes.", a.cfg.MaxUploadBytes)}
	}
	ct, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "multipart/form-data" {
		return badRequest(codeInvalidValue, "", "The request must be multipart/form-data with the fields 'file' and 'purpose'.")
	}
	streamMax, quotaCapped := a.cfg.MaxUploadBytes, false
	quota := p.limits.MaxFileBytes
	if quota > 0 {
		var used int64
		a.b.FSM().View(func(s *fsm.State) { used = projectFileBytes(s, p.project) })
		room := max(0, quota-used)
		if r.ContentLength > 0 && r.ContentLength-formSlack > room {
			return fileQuotaExceeded(p.project, used, r.ContentLength-formSlack, quota)
		}
		if room < streamMax {
			streamMax, quotaCapped = room, true
		}
	}
	boundary := params["boundary"]
	if boundary == "" {
		return badRequest(codeInvalidValue, "", "The multipart body cannot be read: the Content-Type has no boundary.")
	}
	// NextPart also answers a bare io.EOF when the body ends just after a
	// part's delimiter, so the end of the form is trusted only once the
	// closing delimiter went by.
	r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxUploadBytes+formSlack)
	closing := newCloseWatch(r.Body, boundary)
	headers := &headerLimit{r: closing, left: -1}
	mr := multipart.NewReader(headers, boundary)
	var (
		purpose, filename string
		expiresAnchor     string
		expiresSeconds    int64
		ur                *uploadReader
		ref               *vbatchv1.BlobRef
		pre               *precheck
		fileCheck         *vbatchv1.FileCheck
	)
	defer func() { pre.finish(errUploadEnded) }()
	for {
		// Every part before is read to its end (or the upload refused), so
		// what NextPart reads is this part's delimiter, header and
		// read-ahead.
		headers.arm(maxPartHeaderBytes + multipartReadAhead)
		part, err := mr.NextPart()
		headers.disarm()
		if headers.hit {
			return badRequest(codeInvalidValue, "", "A form part's header is larger than the maximum of %d bytes.", maxPartHeaderBytes)
		}
		if err == io.EOF && closing.seen {
			break
		}
		if err == io.EOF {
			// The body ended after a delimiter, without the closing one:
			// cut short, like a "multipart: NextPart: EOF".
			return a.malformed(io.ErrUnexpectedEOF)
		}
		if err != nil {
			return a.malformed(err)
		}
		switch name := part.FormName(); name {
		case "file":
			if ur != nil {
				return badRequest(codeInvalidValue, "file", "The form holds more than one 'file' field.")
			}
			if purpose != "" && !uploadPurposes[purpose] {
				return badPurpose(purpose)
			}
			if !hasFilename(part) {
				return badRequest(codeInvalidValue, "file", "The 'file' field must be a file upload (a form part with a filename), not a plain field.")
			}
			filename = part.FileName()
			if len(filename) > maxFilenameBytes {
				return invalidValue("file", "Invalid 'file': the filename is longer than %d bytes.", maxFilenameBytes)
			}
			ur = &uploadReader{r: part, max: streamMax, maxLine: int64(a.cfg.Validate.MaxLineBytes)}
			if purpose == "" || purpose == "batch" {
				// The purpose often follows the file: check it anyway.
				pre = startPrecheck(a.cfg.Validate)
				ur.tee = pre
			}
			ref, _, err = a.b.StoreUpload(r.Context(), ur)
			fileCheck = pre.finish(err)
			if ur.tooLarge && quotaCapped {
				return quotaExceeded("You exceeded your file storage quota: project %s has room for %d more bytes of files and this upload is larger. Delete files you no longer need and retry.",
					p.project, streamMax)
			}
			if ur.tooLarge {
				return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge, param: "file",
					message: fmt.Sprintf("The file is larger than the maximum of %d bytes.", a.cfg.MaxUploadBytes), cause: err}
			}
			if ur.readErr != nil {
				// The file part could not be read to its end (the body was
				// cut short, or passed its cap): the store kept nothing,
				// and the request is the client's to fix.
				return a.malformed(ur.readErr)
			}
			if err != nil {
				return fmt.Errorf("store upload: %w", err)
			}
		case "purpose", "expires_after[anchor]", "expires_after[seconds]":
			v, err := a.readField(part)
			if err != nil {
				return err
			}
			switch name {
			case "purpose":
				if purpose != "" {
					return invalidValue("purpose", "Invalid 'purpose': the form gives it more than once.")
				}
				purpose = v
			case "expires_after[anchor]":
				expiresAnchor = v
			default:
				if expiresSeconds, err = strconv.ParseInt(v, 10, 64); err != nil {
					return invalidValue("expires_after[seconds]", "Invalid value for 'expires_after[seconds]': %q is not an integer.", v)
				}
			}
		default:
			// Fields this API does not know are ignored, as extra JSON
			// members are; their content is drained, not kept.
			if _, err := io.Copy(io.Discard, part); err != nil {
				return a.malformed(err)
			}
		}
	}
	if ur == nil {
		return missingParam("file")
	}
	if purpose == "" {
		return missingParam("purpose")
	}
	if !uploadPurposes[purpose] {
		return badPurpose(purpose)
	}
	if ref == nil || ref.Bytes != ur.n {
		return fmt.Errorf("store upload: stored %d bytes of %d", ref.GetBytes(), ur.n)
	}
	if purpose == "batch" {
		if ur.n == 0 {
			return badRequest(codeInvalidFile, "file", "The file is empty; a batch input file holds one JSON request per line.")
		}
		if limit := int64(a.cfg.Validate.MaxRequests); ur.nonBlank() > limit {
			return badRequest(codeInvalidFile, "file", "The file has %d requests; a batch input file holds at most %d.", ur.nonBlank(), limit)
		}
		if ur.longLine > 0 {
			return badRequest(codeInvalidFile, "file", "Line %d of the file is longer than the maximum of %d bytes.", ur.longLine, ur.maxLine)
		}
	}
	if filename == "" {
		filename = "file"
	}
	// Headers may carry any bytes; the file's record (protobuf) holds only
	// valid UTF-8.
	filename = strings.ToValidUTF8(filename, "\uFFFD")
	f := &vbatchv1.File{
		Id:       ids.New("file-"),
		Project:  p.project,
		Purpose:  purpose,
		Filename: filename,
		Bytes:    ur.n,
		Sha256:   ref.Sha256,
		Lines:    ur.lines(),
		Parts:    []*vbatchv1.BlobRef{ref},
	}
	if purpose == "batch" {
		f.Check = fileCheck
	}
	if expiresAnchor != "" || expiresSeconds != 0 {
		if expiresAnchor != "created_at" {
			return invalidValue("expires_after[anchor]", "Invalid value for 'expires_after[anchor]': %q; supported: 'created_at'.", expiresAnchor)
		}
		if expiresSeconds < minFileExpiry || expiresSeconds > maxFileExpiry {
			return invalidValue("expires_after[seconds]", "Invalid value for 'expires_after[seconds]': must be between %d and %d.", minFileExpiry, maxFileExpiry)
		}
	}
	cmd := &vbatchv1.CreateFile{File: f}
	if a.b.AtFSMLevel(fsm.LevelCreateTimes) {
		// created_at is the FSM's (the leader's) time and the lifetime
		// counts from it: this coordinator's clock, however far off,
		// decides neither.
		cmd.ExpiresAfterSeconds = expiresSeconds
	} else {
		now := a.b.Now().Unix()
		f.CreatedAt = now
		if expiresSeconds != 0 {
			f.ExpiresAt = now + expiresSeconds
		}
	}
	var check func(s *fsm.State) error
	if quota > 0 {
		check = func(s *fsm.State) error {
			if used := projectFileBytes(s, p.project); used+f.Bytes > quota {
				return fileQuotaExceeded(p.project, used, f.Bytes, quota)
			}
			return nil
		}
	}
	// The rest of the body may have taken long after the file part was
	// stored: make sure a majority still holds the bytes, for at least the
	// GC grace, before the record that refers to them commits.
	if f.Replicas, err = a.b.HoldBlob(r.Context(), ref.Sha256); err != nil {
		return fmt.Errorf("create file %s: %w", f.Id, err)
	}
	if err := a.applyWithin(r.Context(), p.project, check, cmd); err != nil {
		return fmt.Errorf("create file %s: %w", f.Id, err)
	}
	a.b.FSM().View(func(s *fsm.State) {
		// The record as committed, with the FSM's created_at. (No
		// command changes a stored File, so reading it later is safe.)
		if stored, ok := s.Files[f.Id]; ok {
			f = stored
		}
	})
	writeJSON(w, http.StatusOK, toFileObject(f))
	return nil
}

// maxFilenameBytes bounds an uploaded file's name, which every
// coordinator keeps in its replicated state and lists.
const maxFilenameBytes = 255

// hasFilename reports whether a form part is a file upload: its
// Content-Disposition names a filename (possibly empty).
func hasFilename(part *multipart.Part) bool {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return false
	}
	_, ok := params["filename"]
	return ok
}

func badPurpose(purpose string) *apiError {
	return invalidValue("purpose", "Invalid value for 'purpose': %q. Supported values are: 'assistants', 'batch', 'fine-tune', 'vision', 'user_data' and 'evals'.", purpose)
}

// malformed is the answer to a multipart body that cannot be read: 413
// past the body cap, 400 otherwise.
func (a *API) malformed(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge,
			message: fmt.Sprintf("The request body is larger than the maximum of %d bytes.", mbe.Limit), cause: err}
	}
	return badRequest(codeInvalidValue, "", "The multipart body is malformed: %v.", err)
}

// closeWatch passes a multipart body through and records whether its
// closing delimiter ("\n--boundary--": a delimiter ends a line, in "\r\n"
// or "\n", or opens the body) went by. A client picks its boundary so that
// the content never holds it.
type closeWatch struct {
	r     io.Reader
	delim []byte
	tail  []byte // the last bytes read, up to len(delim)-1, to match across reads
	seen  bool
}

func newCloseWatch(r io.Reader, boundary string) *closeWatch {
	return &closeWatch{r: r, delim: []byte("\n--" + boundary + "--"), tail: []byte("\n")}
}

func (c *closeWatch) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 && !c.seen {
		keep := len(c.delim) - 1
		b := p[:n]
		edge := append(c.tail, b[:min(n, keep)]...)
		c.seen = bytes.Contains(edge, c.delim) || bytes.Contains(b, c.delim)
		if n >= keep {
			edge = b
		}
		c.tail = append(c.tail[:0], edge[max(0, len(edge)-keep):]...) // copy handles the overlap
	}
	return n, err
}

// readField reads a small form field.
func (a *API) readField(part *multipart.Part) (string, error) {
	b, err := io.ReadAll(io.LimitReader(part, maxFieldBytes+1))
	if err != nil {
		return "", a.malformed(err)
	}
	if len(b) > maxFieldBytes {
		return "", invalidValue(part.FormName(), "The field '%s' is longer than %d bytes.", part.FormName(), maxFieldBytes)
	}
	return strings.TrimSpace(string(b)), nil
}
