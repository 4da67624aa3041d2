package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/vbatch/vbatch/fsm"
)

// ErrUnavailable marks a Backend error that means the cluster cannot serve
// the request right now (no leader, no quorum to replicate a blob): the API
// answers 503 and the client may retry. A Backend wraps it, for example
// fmt.Errorf("%w: no raft leader", api.ErrUnavailable).
var ErrUnavailable = errors.New("cluster unavailable")

// ErrInsufficientStorage marks a Backend error that means a coordinator's
// disk is full: answered with 507, and retryable once space is freed.
var ErrInsufficientStorage = errors.New("insufficient storage")

// OpenAI's error types.
const (
	typeInvalidRequest = "invalid_request_error"
	typeServer         = "server_error"
)

// Error codes this API answers with, beside OpenAI's own ones such as
// invalid_api_key and missing_required_parameter:
//
//	status  type                   code                     when
//	400     invalid_request_error  invalid_json             the body is not the JSON object expected
//	400     invalid_request_error  missing_required_parameter  a required field is absent
//	400     invalid_request_error  invalid_value            a field has a value not allowed
//	400     invalid_request_error  invalid_file             batch input file missing, wrong purpose or empty
//	401     invalid_request_error  invalid_api_key          no key, an unknown key or a revoked key
//	403     invalid_request_error  insufficient_permissions the key lacks the scope
//	404     invalid_request_error  not_found                no such object in the key's project, no such route
//	405     invalid_request_error  method_not_allowed       the route exists for other methods
//	409     invalid_request_error  conflict                 the object's state forbids it (file in use, batch ended)
//	409     invalid_request_error  unsafe_removal           remove-peer would leave no healthy majority of voters (force overrides)
//	413     invalid_request_error  file_too_large           upload over Config.MaxUploadBytes
//	413     invalid_request_error  request_too_large        any other body over its cap (1 MiB for JSON)
//	429     requests               rate_limit_exceeded      over the key's requests per second; Retry-After says when to retry
//	429     insufficient_quota     insufficient_quota       the project's enqueued requests or file bytes would pass the key's quota
//	500     server_error           internal_error           a bug or a failing disk; logged with the request id
//	503     server_error           service_unavailable      no leader or no quorum; retry
const (
	codeInvalidJSON       = "invalid_json"
	codeMissingParam      = "missing_required_parameter"
	codeInvalidValue      = "invalid_value"
	codeInvalidFile       = "invalid_file"
	codeInvalidAPIKey     = "invalid_api_key"
	codeInsufficientPerms = "insufficient_permissions"
	codeNotFound          = "not_found"
	codeMethodNotAllowed  = "method_not_allowed"
	codeConflict          = "conflict"
	codeUnsafeRemoval     = "unsafe_removal"
	codeFileTooLarge      = "file_too_large"
	codeRequestTooLarge   = "request_too_large"
	codeInternal          = "internal_error"
	codeUnavailable       = "service_unavailable"
)

// apiError is an error answered to the client as OpenAI's error object.
type apiError struct {
	status  int
	typ     string
	code    string
	param   string
	message string
	// cause is the underlying error, logged but never shown.
	cause error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.status, e.code, e.message, e.cause)
	}
	return fmt.Sprintf("%d %s: %s", e.status, e.code, e.message)
}

func (e *apiError) Unwrap() error { return e.cause }

// errorBody is the JSON of an OpenAI error response.
type errorBody struct {
	Error errorObject `json:"error"`
}

type errorObject struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) body() errorBody {
	return errorBody{Error: errorObject{Message: e.message, Type: e.typ, Param: nullable(e.param), Code: nullable(e.code)}}
}

func badRequest(code, param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: typeInvalidRequest, code: code, param: param, message: fmt.Sprintf(format, args...)}
}

func missingParam(param string) *apiError {
	return badRequest(codeMissingParam, param, "Missing required parameter: '%s'.", param)
}

func invalidValue(param, format string, args ...any) *apiError {
	return badRequest(codeInvalidValue, param, format, args...)
}

func notFound(param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusNotFound, typ: typeInvalidRequest, code: codeNotFound, param: param, message: fmt.Sprintf(format, args...)}
}

func fileNotFound(id string) *apiError { return notFound("id", "No such File object: %s", id) }

func batchNotFound(id string) *apiError {
	return notFound("", "No batch found with id '%s'.", id)
}

// unavailable is a 503 service_unavailable: retry later.
func unavailable(message string) *apiError {
	return &apiError{status: http.StatusServiceUnavailable, typ: typeServer, code: codeUnavailable, message: message}
}

func conflict(format string, args ...any) *apiError {
	return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeConflict, message: fmt.Sprintf(format, args...)}
}

func unauthorized(msg string) *apiError {
	return &apiError{status: http.StatusUnauthorized, typ: typeInvalidRequest, code: codeInvalidAPIKey, message: msg}
}

// toAPIError maps any error of a handler or the Backend to the error
// object and status answered: the one place fsm sentinels become HTTP.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	switch {
	case errors.Is(err, errUploadTooLarge):
		return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge, param: "file", message: err.Error(), cause: err}
	case errors.Is(err, fsm.ErrNotFound):
		return &apiError{status: http.StatusNotFound, typ: typeInvalidRequest, code: codeNotFound, message: sentence(err), cause: err}
	case errors.Is(err, fsm.ErrExists), errors.Is(err, fsm.ErrConflict), errors.Is(err, fsm.ErrStaleToken):
		return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeConflict, message: sentence(err), cause: err}
	case errors.Is(err, fsm.ErrInvalid):
		return &apiError{status: http.StatusBadRequest, typ: typeInvalidRequest, code: codeInvalidValue, message: sentence(err), cause: err}
	case errors.Is(err, ErrInsufficientStorage):
		return &apiError{status: http.StatusInsufficientStorage, typ: typeServer, code: "insufficient_storage",
			message: "The server has no disk space left for this upload. Please retry later.", cause: err}
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &apiError{status: http.StatusServiceUnavailable, typ: typeServer, code: codeUnavailable,
			message: "The cluster cannot serve this request right now (no leader or no quorum). Please retry.", cause: err}
	default:
		return &apiError{status: http.StatusInternalServerError, typ: typeServer, code: codeInternal,
			message: "The server had an error while processing your request. Please retry; if the error persists, report the request id.", cause: err}
	}
}

// sentence makes a rejection's text read as a message: capitalized, with a
// final period.
func sentence(err error) string {
	s := err.Error()
	if s == "" {
		return s
	}
	if c := s[0]; c >= 'a' && c <= 'z' {
		s = string(c-'a'+'A') + s[1:]
	}
	if s[len(s)-1] != '.' {
		s += "."
	}
	return s
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
