package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"

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
	u.n += int64(n)
	if n > 0 {
		u.count(p[:n])
	}
	if u.n > u.max {
		u.tooLarge = true
		return 0, fmt.Errorf("%w: over the maximum of %d bytes", errUploadTooLarge, u.max)
	}
	return n, err
}

func (u *uploadReader) count(b []byte) {
	for _, c := range b {
		switch c {
		case '\n':
			u.newlines++
			if u.content {
				u.requests++
			}
			u.content = false
		case ' ', '\t', '\r':
		default:
			u.content = true
		}
	}
	u.last = b[len(b)-1]
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
func (a *API) uploadFile(w http.ResponseWriter, r *http.Request, p *principal) error {
	if r.ContentLength > a.cfg.MaxUploadBytes+maxFieldBytes*8 {
		return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge, param: "file",
			message: fmt.Sprintf("The file is larger than the maximum of %d bytes.", a.cfg.MaxUploadBytes)}
	}
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "multipart/form-data" {
		return badRequest(codeInvalidValue, "", "The request must be multipart/form-data with the fields 'file' and 'purpose'.")
	}
	r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxUploadBytes+maxFieldBytes*8)
	mr, err := r.MultipartReader()
	if err != nil {
		return badRequest(codeInvalidValue, "", "The multipart body cannot be read: %v.", err)
	}
	var (
		purpose, filename string
		expiresAnchor     string
		expiresSeconds    int64
		ur                *uploadReader
		ref               *vbatchv1.BlobRef
		replicas          []string
	)
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
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
			filename = part.FileName()
			ur = &uploadReader{r: part, max: a.cfg.MaxUploadBytes}
			ref, replicas, err = a.b.StoreUpload(r.Context(), ur)
			if ur.tooLarge {
				return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge, param: "file",
					message: fmt.Sprintf("The file is larger than the maximum of %d bytes.", a.cfg.MaxUploadBytes), cause: err}
			}
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) || errors.Is(err, io.ErrUnexpectedEOF) {
					return a.malformed(err)
				}
				return fmt.Errorf("store upload: %w", err)
			}
		case "purpose", "expires_after[anchor]", "expires_after[seconds]":
			v, err := a.readField(part)
			if err != nil {
				return err
			}
			switch name {
			case "purpose":
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
	}
	if filename == "" {
		filename = "file"
	}
	now := a.b.Now().Unix()
	f := &vbatchv1.File{
		Id:        ids.New("file-"),
		Project:   p.project,
		Purpose:   purpose,
		Filename:  filename,
		Bytes:     ur.n,
		Sha256:    ref.Sha256,
		CreatedAt: now,
		Lines:     ur.lines(),
		Replicas:  replicas,
		Parts:     []*vbatchv1.BlobRef{ref},
	}
	if expiresAnchor != "" || expiresSeconds != 0 {
		if expiresAnchor != "created_at" {
			return invalidValue("expires_after[anchor]", "Invalid value for 'expires_after[anchor]': %q; supported: 'created_at'.", expiresAnchor)
		}
		if expiresSeconds < minFileExpiry || expiresSeconds > maxFileExpiry {
			return invalidValue("expires_after[seconds]", "Invalid value for 'expires_after[seconds]': must be between %d and %d.", minFileExpiry, maxFileExpiry)
		}
		f.ExpiresAt = now + expiresSeconds
	}
	if _, err := a.b.Apply(r.Context(), &vbatchv1.CreateFile{File: f}); err != nil {
		return fmt.Errorf("create file %s: %w", f.Id, err)
	}
	writeJSON(w, http.StatusOK, toFileObject(f))
	return nil
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
