package blob

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// HeaderSize carries a blob's full size: required on PUT, set on GET and
// HEAD responses (where Content-Length may be that of a range).
const HeaderSize = "X-Blob-Size"

// TrailerSHA carries, as an HTTP trailer of a streamed POST, the sha256 of
// the content the sender wrote.
const TrailerSHA = "X-Blob-Sha256"

// PathPrefix is where Handler expects to be mounted, unstripped:
// mux.Handle(blob.PathPrefix, store.Handler()).
const PathPrefix = "/blobs/"

// Handler serves peer transfer on the coordinator's RPC listener:
//
//	PUT  /blobs/{sha}   body is the blob, X-Blob-Size its size; stored only
//	                    if it matches (204, 400 on mismatch, 507 disk full)
//	GET  /blobs/{sha}   the verified blob; ?offset=&length= for a range
//	HEAD /blobs/{sha}   200 with X-Blob-Size when present, else 404
//	POST /blobs/        a blob streamed while its sender still receives it:
//	                    chunked body, its sha256 and size in the trailers
//	                    X-Blob-Sha256 and X-Blob-Size; kept only if the
//	                    content matches them (204, else 400; 507 disk full)
//
// A name that is not 64 lowercase hex digits is answered 400. A HEAD that
// finds the blob also restarts its GC grace: a pusher that finds the blob
// here counts it as a replica and relies on it staying until the metadata
// that references it is committed.
func (s *Store) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT "+PathPrefix+"{sha}", s.servePut)
	mux.HandleFunc("GET "+PathPrefix+"{sha}", s.serveGet)
	mux.HandleFunc("HEAD "+PathPrefix+"{sha}", s.serveHead)
	mux.HandleFunc("POST "+PathPrefix+"{$}", s.serveStream)
	return mux
}

func shaParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	sha := r.PathValue("sha")
	if !ValidSHA(sha) {
		http.Error(w, "blob name must be 64 lowercase hex digits", http.StatusBadRequest)
		return "", false
	}
	return sha, true
}

func (s *Store) servePut(w http.ResponseWriter, r *http.Request) {
	sha, ok := shaParam(w, r)
	if !ok {
		return
	}
	size, err := strconv.ParseInt(r.Header.Get(HeaderSize), 10, 64)
	if err != nil || size < 0 {
		http.Error(w, "missing or invalid "+HeaderSize+" header", http.StatusBadRequest)
		return
	}
	if r.ContentLength >= 0 && r.ContentLength != size {
		http.Error(w, fmt.Sprintf("Content-Length %d differs from %s %d", r.ContentLength, HeaderSize, size), http.StatusBadRequest)
		return
	}
	if _, err := s.IngestExpected(r.Body, sha, size); err != nil {
		http.Error(w, err.Error(), putStatus(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// serveStream stores a blob whose sha256 and size arrive as trailers, after
// the content: nothing is kept unless both are there and match.
func (s *Store) serveStream(w http.ResponseWriter, r *http.Request) {
	ref, err := s.IngestVerified(r.Body, func() (string, int64, error) {
		sha := r.Trailer.Get(TrailerSHA)
		size, err := strconv.ParseInt(r.Trailer.Get(HeaderSize), 10, 64)
		if !ValidSHA(sha) || err != nil || size < 0 {
			return "", 0, fmt.Errorf("trailers %s=%q %s=%q: %w", TrailerSHA, sha, HeaderSize, r.Trailer.Get(HeaderSize), ErrMismatch)
		}
		return sha, size, nil
	})
	if err != nil {
		http.Error(w, err.Error(), putStatus(err))
		return
	}
	w.Header().Set(TrailerSHA, ref.Sha256)
	w.WriteHeader(http.StatusNoContent)
}

func putStatus(err error) int {
	switch {
	case errors.Is(err, ErrMismatch), errors.Is(err, ErrInvalidSHA):
		return http.StatusBadRequest
	case errors.Is(err, ErrNoSpace):
		return http.StatusInsufficientStorage
	default:
		return http.StatusInternalServerError
	}
}

func (s *Store) serveHead(w http.ResponseWriter, r *http.Request) {
	sha, ok := shaParam(w, r)
	if !ok {
		return
	}
	// A peer counts this answer as a copy that will outlive its commit:
	// look and restart the GC grace in one step.
	size, ok := s.Hold(sha)
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set(HeaderSize, strconv.FormatInt(size, 10))
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
}

func (s *Store) serveGet(w http.ResponseWriter, r *http.Request) {
	sha, ok := shaParam(w, r)
	if !ok {
		return
	}
	size, ok := s.Stat(sha)
	if !ok {
		http.Error(w, "blob not found", http.StatusNotFound)
		return
	}
	offset, length, ranged, err := rangeParams(r, size)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var rc io.ReadCloser
	if ranged {
		rc, err = s.OpenRange(sha, offset, length)
	} else {
		rc, err = s.Open(sha)
	}
	if err != nil {
		http.Error(w, err.Error(), getStatus(err))
		return
	}
	defer rc.Close()
	h := w.Header()
	h.Set(HeaderSize, strconv.FormatInt(size, 10))
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	h.Set("Content-Type", "application/octet-stream")
	cw := &countingWriter{w: w}
	if _, err := io.Copy(cw, rc); err != nil {
		if cw.n == 0 {
			h.Del("Content-Length")
			h.Del(HeaderSize)
			http.Error(w, err.Error(), getStatus(err))
			return
		}
		// Headers are gone: abort the connection so the peer sees a short
		// body rather than a clean end.
		panic(http.ErrAbortHandler)
	}
}

func getStatus(err error) int {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrCorrupt):
		// A corrupt blob has been quarantined: from now on it is missing.
		return http.StatusNotFound
	case errors.Is(err, ErrOutOfRange):
		return http.StatusRequestedRangeNotSatisfiable
	default:
		return http.StatusInternalServerError
	}
}

// rangeParams reads ?offset=&length=; length defaults to the rest of the
// blob. Without either it returns the whole blob, ranged false.
func rangeParams(r *http.Request, size int64) (offset, length int64, ranged bool, err error) {
	q := r.URL.Query()
	offStr, lenStr := q.Get("offset"), q.Get("length")
	if offStr == "" && lenStr == "" {
		return 0, size, false, nil
	}
	if offStr != "" {
		if offset, err = strconv.ParseInt(offStr, 10, 64); err != nil || offset < 0 {
			return 0, 0, false, fmt.Errorf("invalid offset %q", offStr)
		}
	}
	length = size - offset
	if lenStr != "" {
		if length, err = strconv.ParseInt(lenStr, 10, 64); err != nil || length < 0 {
			return 0, 0, false, fmt.Errorf("invalid length %q", lenStr)
		}
	}
	return offset, length, true, nil
}

// countingWriter counts what was written, so a failure before the first
// byte can still be answered with an error status.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
