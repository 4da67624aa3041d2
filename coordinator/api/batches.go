package api

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/internal/ids"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// batchEndpoints are the endpoints a batch may run against.
var batchEndpoints = []string{"/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions"}

// Bounds of a batch's inputs, as OpenAI's where OpenAI has them.
const (
	maxMetadataPairs  = 16
	maxMetadataKey    = 64
	maxMetadataValue  = 512
	maxWindowMinutes  = 7 * 24 * 60
	defaultBatchLimit = 20
	maxBatchLimit     = 100
	minOutputExpiry   = 3600
	maxOutputExpiry   = 30 * 24 * 3600
	// maxIDBytes bounds an object id a client names: ours are far shorter.
	maxIDBytes = 128
)

// windowRE is a completion window: a whole number of minutes or hours.
var windowRE = regexp.MustCompile(`^([1-9][0-9]{0,6})([mh])$`)

// parseWindow returns a completion window in seconds.
func parseWindow(s string) (int64, error) {
	m := windowRE.FindStringSubmatch(s)
	if m == nil {
		return 0, invalidValue("completion_window", "Invalid value for 'completion_window': %q. Use a whole number of minutes or hours such as '24h' or '90m'.", s)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64) // at most 7 digits: cannot fail
	minutes := n
	if m[2] == "h" {
		minutes = n * 60
	}
	if minutes > maxWindowMinutes {
		return 0, invalidValue("completion_window", "Invalid value for 'completion_window': %q is longer than the maximum of 168h.", s)
	}
	return minutes * 60, nil
}

// createBatchRequest is the body of POST /v1/batches.
type createBatchRequest struct {
	InputFileID      string `json:"input_file_id"`
	Endpoint         string `json:"endpoint"`
	CompletionWindow string `json:"completion_window"`
	// Metadata values are pointers so that a JSON null is told from "".
	Metadata           map[string]*string `json:"metadata"`
	OutputExpiresAfter *struct {
		Anchor  string `json:"anchor"`
		Seconds int64  `json:"seconds"`
	} `json:"output_expires_after"`
}

func (req *createBatchRequest) check() error {
	switch {
	case req.InputFileID == "":
		return missingParam("input_file_id")
	case req.Endpoint == "":
		return missingParam("endpoint")
	case req.CompletionWindow == "":
		return missingParam("completion_window")
	}
	if len(req.InputFileID) > maxIDBytes {
		return invalidValue("input_file_id", "Invalid value for 'input_file_id': longer than %d bytes.", maxIDBytes)
	}
	if !slices.Contains(batchEndpoints, req.Endpoint) {
		return invalidValue("endpoint", "Invalid value for 'endpoint': %q. Supported values are: '/v1/responses', '/v1/chat/completions', '/v1/embeddings' and '/v1/completions'.", req.Endpoint)
	}
	if len(req.Metadata) > maxMetadataPairs {
		return invalidValue("metadata", "Invalid 'metadata': at most %d key-value pairs are allowed, got %d.", maxMetadataPairs, len(req.Metadata))
	}
	for k, pv := range req.Metadata {
		if pv == nil {
			return invalidValue("metadata", "Invalid 'metadata': the value of %q is null; values must be strings.", k)
		}
		v := *pv
		if utf8.RuneCountInString(k) > maxMetadataKey {
			return invalidValue("metadata", "Invalid 'metadata': key %q is longer than %d characters.", k, maxMetadataKey)
		}
		if utf8.RuneCountInString(v) > maxMetadataValue {
			return invalidValue("metadata", "Invalid 'metadata': the value of %q is longer than %d characters.", k, maxMetadataValue)
		}
	}
	if e := req.OutputExpiresAfter; e != nil {
		if e.Anchor != "created_at" {
			return invalidValue("output_expires_after.anchor", "Invalid value for 'output_expires_after.anchor': %q; supported: 'created_at'.", e.Anchor)
		}
		if e.Seconds < minOutputExpiry || e.Seconds > maxOutputExpiry {
			return invalidValue("output_expires_after.seconds", "Invalid value for 'output_expires_after.seconds': must be between %d and %d.", minOutputExpiry, maxOutputExpiry)
		}
	}
	return nil
}

// metadata is the request's metadata, checked to hold no null.
func (req *createBatchRequest) metadata() map[string]string {
	if req.Metadata == nil {
		return nil
	}
	m := make(map[string]string, len(req.Metadata))
	for k, v := range req.Metadata {
		m[k] = *v
	}
	return m
}

// createBatch serves POST /v1/batches.
func (a *API) createBatch(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req createBatchRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if err := req.check(); err != nil {
		return err
	}
	window, err := parseWindow(req.CompletionWindow)
	if err != nil {
		return err
	}
	var input *vbatchv1.File
	now := a.b.Now().Unix()
	err = a.find(r, func(s *fsm.State) bool {
		if f, ok := s.Files[req.InputFileID]; ok && f.Project == p.project && !fsm.FileExpired(f, now) {
			input = proto.Clone(f).(*vbatchv1.File)
		}
		return input != nil
	})
	if err != nil {
		return err
	}
	if input == nil {
		// 404 as for any object the key's project cannot see: another
		// project's file reads exactly like a missing one.
		return notFound("input_file_id", "No such File object: %s", req.InputFileID)
	}
	if input.Purpose != "batch" {
		return badRequest(codeInvalidFile, "input_file_id", "The input file %s has purpose '%s'; a batch needs a file uploaded with purpose 'batch'.", input.Id, input.Purpose)
	}
	b := &vbatchv1.Batch{
		Id:               ids.New("batch_"),
		Project:          p.project,
		InputFileId:      input.Id,
		Endpoint:         req.Endpoint,
		CompletionWindow: req.CompletionWindow,
		Metadata:         req.metadata(),
		Status:           vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING,
		RequestCounts:    &vbatchv1.RequestCounts{},
	}
	cmd := &vbatchv1.CreateBatch{Batch: b}
	if a.b.AtFSMLevel(fsm.LevelCreateTimes) {
		// created_at is the FSM's (the leader's) time and the window
		// counts from it: this coordinator's clock, however far off,
		// decides neither.
		cmd.WindowSeconds = window
	} else {
		b.CreatedAt, b.ExpiresAt = now, now+window
	}
	if e := req.OutputExpiresAfter; e != nil {
		if !a.b.AtFSMLevel(fsm.LevelOutputExpiry) {
			// A server of an older build would not date the result files
			// and its state would differ from its peers'.
			return unavailable("'output_expires_after' is not available until every coordinator runs a build that supports it; retry after the upgrade, or create the batch without it.")
		}
		b.OutputExpiresAfterSeconds = e.Seconds
	}
	setAuditTarget(r, "", b.Id)
	var check func(s *fsm.State) error
	if limit := p.limits.MaxEnqueuedRequests; limit > 0 {
		check = func(s *fsm.State) error {
			if queued := enqueuedRequests(s, p.project); queued+input.Lines > limit {
				return quotaExceeded("You exceeded your enqueued requests quota: project %s has %d requests waiting in batches that have not ended, and the %d of this batch would pass its limit of %d. Wait for batches to finish or cancel some, and retry.",
					p.project, queued, input.Lines, limit)
			}
			return nil
		}
	}
	if err := a.applyWithin(r.Context(), p.project, check, cmd); err != nil {
		return fmt.Errorf("create batch %s: %w", b.Id, err)
	}
	if stored := a.findBatch(p, b.Id); stored != nil {
		b = stored
	}
	writeJSON(w, http.StatusOK, toBatchObject(b))
	return nil
}

// findBatch returns a copy of batch id of p's project, or nil.
func (a *API) findBatch(p *principal, id string) *vbatchv1.Batch {
	var b *vbatchv1.Batch
	a.b.FSM().View(func(s *fsm.State) { b = batchOf(s, p, id) })
	return b
}

// lookupBatch is findBatch, retried after a consistent read on a miss.
func (a *API) lookupBatch(r *http.Request, p *principal, id string) (*vbatchv1.Batch, error) {
	var b *vbatchv1.Batch
	err := a.find(r, func(s *fsm.State) bool {
		b = batchOf(s, p, id)
		return b != nil
	})
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, batchNotFound(id)
	}
	return b, nil
}

func batchOf(s *fsm.State, p *principal, id string) *vbatchv1.Batch {
	if got, ok := s.Batches[id]; ok && got.Project == p.project {
		return proto.Clone(got).(*vbatchv1.Batch)
	}
	return nil
}

// getBatch serves GET /v1/batches/{id}.
func (a *API) getBatch(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := a.consistent(r); err != nil {
		return err
	}
	b, err := a.lookupBatch(r, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toBatchObject(b))
	return nil
}

// listBatches serves GET /v1/batches: newest first, after an exclusive
// cursor.
func (a *API) listBatches(w http.ResponseWriter, r *http.Request, p *principal) error {
	q := r.URL.Query()
	limit, err := parseLimit(q.Get("limit"), defaultBatchLimit, maxBatchLimit)
	if err != nil {
		return err
	}
	if err := a.consistent(r); err != nil {
		return err
	}
	// The page is built under the read lock without keeping anything of
	// the state, and written after it is released: a slow client must not
	// hold up the FSM.
	var out listObject[batchObject]
	a.b.FSM().View(func(s *fsm.State) {
		var batches []*vbatchv1.Batch
		for _, b := range s.Batches {
			if b.Project == p.project {
				batches = append(batches, b)
			}
		}
		slices.SortFunc(batches, func(x, y *vbatchv1.Batch) int {
			return -cmp.Or(cmp.Compare(x.CreatedAt, y.CreatedAt), cmp.Compare(x.Id, y.Id))
		})
		page, hasMore, perr := paginate(batches, func(b *vbatchv1.Batch) string { return b.Id }, q.Get("after"), limit)
		if perr != nil {
			err = perr
			return
		}
		out = listObject[batchObject]{Object: "list", Data: make([]batchObject, len(page)), HasMore: hasMore}
		for i, b := range page {
			// toBatchObject copies every field but the metadata map,
			// which is cloned here.
			o := toBatchObject(b)
			o.Metadata = cloneMap(o.Metadata)
			out.Data[i] = o
		}
		if len(page) > 0 {
			first, last := page[0].Id, page[len(page)-1].Id
			out.FirstID, out.LastID = &first, &last
		}
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// cancelBatch serves POST /v1/batches/{id}/cancel: the batch moves to
// cancelling (or at once to cancelled when no work ran). Cancelling a batch
// already cancelling or cancelled answers it as it is.
func (a *API) cancelBatch(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	b, err := a.lookupBatch(r, p, id)
	if err != nil {
		return err
	}
	switch b.Status {
	case vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING, vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED:
		writeJSON(w, http.StatusOK, toBatchObject(b))
		return nil
	}
	if fsm.IsTerminal(b.Status) || b.Status == vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING {
		return conflict("Cannot cancel a batch with status '%s'.", statusName(b.Status))
	}
	if _, err := a.b.Apply(r.Context(), &vbatchv1.CancelBatch{BatchId: id, Project: p.project}); err != nil {
		return fmt.Errorf("cancel batch %s: %w", id, err)
	}
	if b = a.findBatch(p, id); b == nil {
		return batchNotFound(id)
	}
	writeJSON(w, http.StatusOK, toBatchObject(b))
	return nil
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
