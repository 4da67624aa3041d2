package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/vbatch/vbatch/coordinator/validate"
)

// ErrNoAgent is returned by Config.Inference when no live agent serves the
// requested model; it is answered with 503.
var ErrNoAgent = errors.New("no live agent serves this model")

// ErrInvalidJSON is returned by Config.Inference for a body that is not a
// JSON object; it is answered with 400 invalid_json.
var ErrInvalidJSON = errors.New("the body is not a JSON object")

// ErrOverloaded is returned by Config.Inference when this server carries as
// many online request bodies as it may; it is answered with 503.
var ErrOverloaded = errors.New("too many online requests in flight")

// inference hands an online request to the router. With Limits.MaxTokens
// or Limits.MaxN set, the body is read first (within its cap) and a request
// asking for more than they allow is answered 400, as OpenAI answers a
// max_tokens over a model's limit; the router then reads the same bytes.
func (a *API) inference(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if a.cfg.Inference == nil {
		return unavailable("Online inference is not enabled on this server.")
	}
	if a.cfg.Limits.MaxTokens > 0 || a.cfg.Limits.MaxN > 0 {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			if tooLarge := bodyTooLarge(err); tooLarge != nil {
				return tooLarge
			}
			return badRequest(codeInvalidJSON, "", "The request body could not be read: %v.", err)
		}
		if err := checkInferenceBody(body, a.cfg.Limits.MaxTokens, a.cfg.Limits.MaxN); err != nil {
			return err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	err := a.cfg.Inference(w, r)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNoAgent):
		return &apiError{status: http.StatusServiceUnavailable, typ: typeServer, code: "model_unavailable", param: "model", message: sentence(err), cause: err}
	case errors.Is(err, ErrOverloaded):
		return &apiError{status: http.StatusServiceUnavailable, typ: typeServer, code: "overloaded", message: "The server is currently overloaded with online requests; please retry later.", cause: err}
	case errors.Is(err, ErrInvalidJSON):
		return badRequest(codeInvalidJSON, "", "We could not parse the JSON body of your request. The API expects a JSON object; see https://platform.openai.com/docs/api-reference.")
	}
	if tooLarge := bodyTooLarge(err); tooLarge != nil {
		return tooLarge
	}
	return &apiError{status: http.StatusBadRequest, typ: typeInvalidRequest, code: codeInvalidValue, message: sentence(err), cause: err}
}

// checkInferenceBody parses an online request body (chat/completions,
// completions or embeddings) as a JSON object and checks it against the
// caps (zero: none): 400 for a body that is not an object or that asks for
// more than a cap allows.
func checkInferenceBody(body []byte, maxTokens, maxN int64) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return badRequest(codeInvalidJSON, "", "We could not parse the JSON body of your request. The API expects a JSON object; see https://platform.openai.com/docs/api-reference.")
	}
	if ce := validate.CheckCaps(obj, maxTokens, maxN); ce != nil {
		return invalidValue(ce.Field, "%s", ce.Message)
	}
	return nil
}
