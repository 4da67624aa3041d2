package api

import (
	"strings"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// The JSON objects of OpenAI's API, field for field, in the order OpenAI
// writes them. Timestamps are unix seconds; a zero timestamp and an empty
// id are null, as OpenAI sends them.

// fileObject is OpenAI's File object.
type fileObject struct {
	ID            string  `json:"id"`
	Object        string  `json:"object"`
	Bytes         int64   `json:"bytes"`
	CreatedAt     int64   `json:"created_at"`
	ExpiresAt     *int64  `json:"expires_at"`
	Filename      string  `json:"filename"`
	Purpose       string  `json:"purpose"`
	Status        string  `json:"status"`
	StatusDetails *string `json:"status_details"`
}

func toFileObject(f *vbatchv1.File) fileObject {
	return fileObject{
		ID:        f.Id,
		Object:    "file",
		Bytes:     f.Bytes,
		CreatedAt: f.CreatedAt,
		ExpiresAt: nullTime(f.ExpiresAt),
		Filename:  f.Filename,
		Purpose:   f.Purpose,
		// Files are stored before their metadata is committed: every file
		// the API can see is processed.
		Status: "processed",
	}
}

// fileDeleted is the answer to DELETE /v1/files/{id}.
type fileDeleted struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Deleted bool   `json:"deleted"`
}

// batchObject is OpenAI's Batch object.
type batchObject struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"`
	Endpoint         string            `json:"endpoint"`
	Model            *string           `json:"model"`
	Errors           *batchErrors      `json:"errors"`
	InputFileID      string            `json:"input_file_id"`
	CompletionWindow string            `json:"completion_window"`
	Status           string            `json:"status"`
	OutputFileID     *string           `json:"output_file_id"`
	ErrorFileID      *string           `json:"error_file_id"`
	CreatedAt        int64             `json:"created_at"`
	InProgressAt     *int64            `json:"in_progress_at"`
	ExpiresAt        *int64            `json:"expires_at"`
	FinalizingAt     *int64            `json:"finalizing_at"`
	CompletedAt      *int64            `json:"completed_at"`
	FailedAt         *int64            `json:"failed_at"`
	ExpiredAt        *int64            `json:"expired_at"`
	CancellingAt     *int64            `json:"cancelling_at"`
	CancelledAt      *int64            `json:"cancelled_at"`
	RequestCounts    requestCounts     `json:"request_counts"`
	Usage            usage             `json:"usage"`
	Metadata         map[string]string `json:"metadata"`
}

// batchErrors is the errors member of a Batch: a list object.
type batchErrors struct {
	Object string       `json:"object"`
	Data   []batchError `json:"data"`
}

type batchError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
	Line    *int64  `json:"line"`
}

type requestCounts struct {
	Total     int64 `json:"total"`
	Completed int64 `json:"completed"`
	Failed    int64 `json:"failed"`
}

type usage struct {
	InputTokens         int64               `json:"input_tokens"`
	InputTokensDetails  inputTokensDetails  `json:"input_tokens_details"`
	OutputTokens        int64               `json:"output_tokens"`
	OutputTokensDetails outputTokensDetails `json:"output_tokens_details"`
	TotalTokens         int64               `json:"total_tokens"`
}

type inputTokensDetails struct {
	CachedTokens int64 `json:"cached_tokens"`
}

type outputTokensDetails struct {
	ReasoningTokens int64 `json:"reasoning_tokens"`
}

func toBatchObject(b *vbatchv1.Batch) batchObject {
	o := batchObject{
		ID:               b.Id,
		Object:           "batch",
		Endpoint:         b.Endpoint,
		Model:            nullable(b.Model),
		InputFileID:      b.InputFileId,
		CompletionWindow: b.CompletionWindow,
		Status:           statusName(b.Status),
		OutputFileID:     nullable(b.OutputFileId),
		ErrorFileID:      nullable(b.ErrorFileId),
		CreatedAt:        b.CreatedAt,
		InProgressAt:     nullTime(b.InProgressAt),
		ExpiresAt:        nullTime(b.ExpiresAt),
		FinalizingAt:     nullTime(b.FinalizingAt),
		CompletedAt:      nullTime(b.CompletedAt),
		FailedAt:         nullTime(b.FailedAt),
		ExpiredAt:        nullTime(b.ExpiredAt),
		CancellingAt:     nullTime(b.CancellingAt),
		CancelledAt:      nullTime(b.CancelledAt),
	}
	if rc := b.RequestCounts; rc != nil {
		o.RequestCounts = requestCounts{Total: rc.Total, Completed: rc.Completed, Failed: rc.Failed}
	}
	if u := b.Usage; u != nil {
		o.Usage = usage{
			InputTokens:         u.InputTokens,
			InputTokensDetails:  inputTokensDetails{CachedTokens: u.CachedTokens},
			OutputTokens:        u.OutputTokens,
			OutputTokensDetails: outputTokensDetails{ReasoningTokens: u.ReasoningTokens},
			TotalTokens:         u.TotalTokens,
		}
	}
	if len(b.Errors) > 0 {
		o.Errors = &batchErrors{Object: "list", Data: make([]batchError, len(b.Errors))}
		for i, e := range b.Errors {
			o.Errors.Data[i] = batchError{Code: e.Code, Message: e.Message, Param: nullable(e.Param), Line: nullTime(e.Line)}
		}
	}
	if len(b.Metadata) > 0 {
		o.Metadata = b.Metadata
	}
	return o
}

// statusName is OpenAI's name of a batch status: the enum name, lower case,
// without its prefix ("in_progress").
func statusName(s vbatchv1.BatchStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BATCH_STATUS_"))
}

// listObject is OpenAI's cursor page.
type listObject[T any] struct {
	Object  string  `json:"object"`
	Data    []T     `json:"data"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
	HasMore bool    `json:"has_more"`
}

// Model is a model the cluster serves: Created is when the earliest live
// agent serving it last registered (unix seconds; it moves forward when
// that agent registers again, and is 0 while no agent serving it is
// registered yet).
type Model struct {
	ID      string
	Created int64
}

func toModelObject(m Model) modelObject {
	return modelObject{ID: m.ID, Object: "model", Created: m.Created, OwnedBy: "vbatch"}
}

// modelObject is OpenAI's Model object.
type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// keyObject describes a stored API key; Key is set only in the answer to
// its creation, the one time the secret is shown.
type keyObject struct {
	ID        string   `json:"id"`
	Object    string   `json:"object"`
	Key       string   `json:"key,omitempty"`
	Project   string   `json:"project"`
	Name      string   `json:"name"`
	Prefix    string   `json:"prefix"`
	Scopes    []string `json:"scopes"`
	CreatedAt int64    `json:"created_at"`
	RevokedAt *int64   `json:"revoked_at"`
	// Limits are the key's own limits: 0 is the deployment's default, a
	// negative value no limit.
	Limits keyLimitsObject `json:"limits"`
}

// keyLimitsObject is a key's limits on the wire.
type keyLimitsObject struct {
	RequestsPerSecond   float64 `json:"requests_per_second"`
	MaxEnqueuedRequests int64   `json:"max_enqueued_requests"`
	MaxFileBytes        int64   `json:"max_file_bytes"`
}

func toKeyObject(k *vbatchv1.APIKey) keyObject {
	o := keyObject{
		ID:        k.Id,
		Object:    "api_key",
		Project:   k.Project,
		Name:      k.Name,
		Prefix:    k.Prefix,
		Scopes:    make([]string, 0, len(k.Scopes)),
		CreatedAt: k.CreatedAt,
		RevokedAt: nullTime(k.RevokedAt),
		Limits: keyLimitsObject{
			RequestsPerSecond:   k.GetLimits().GetRequestsPerSecond(),
			MaxEnqueuedRequests: k.GetLimits().GetMaxEnqueuedRequests(),
			MaxFileBytes:        k.GetLimits().GetMaxFileBytes(),
		},
	}
	for _, s := range k.Scopes {
		o.Scopes = append(o.Scopes, scopeName(s))
	}
	return o
}

func nullTime(t int64) *int64 {
	if t == 0 {
		return nil
	}
	return &t
}
