package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
)

// Body fields bounded by the per-deployment caps. Engines read each of them
// as a count of tokens or of choices; vLLM also honours min_tokens (which
// forces at least that many tokens) and best_of (how many sequences are
// generated for one answer), so those are capped too.
var (
	tokenFields  = []string{"max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens"}
	choiceFields = []string{"n", "best_of"}
)

// CapError is a request body field that asks for more than a deployment
// cap allows, or that is not a number where a cap applies.
type CapError struct {
	// Code is CodeExceededMaxTokens or CodeExceededMaxN.
	Code string
	// Field is the body member, such as "max_tokens".
	Field string
	// Message explains the problem to the client.
	Message string
}

func (e *CapError) Error() string { return e.Message }

// CheckCaps checks the fields of a request body (the JSON object an engine
// receives: OpenAI's chat/completions, completions or responses body)
// against the caps: maxTokens bounds max_tokens, max_completion_tokens,
// max_output_tokens and min_tokens; maxN bounds n and best_of. A cap of
// zero or less is no cap. An absent or null field fits; a present one must
// be a JSON number, since engines that coerce strings ("100000") to
// integers would otherwise let a request slip past the cap. It returns nil
// when the body fits.
func CheckCaps(body map[string]json.RawMessage, maxTokens, maxN int64) *CapError {
	if maxTokens > 0 {
		if e := checkFields(body, tokenFields, maxTokens, CodeExceededMaxTokens, "tokens"); e != nil {
			return e
		}
	}
	if maxN > 0 {
		if e := checkFields(body, choiceFields, maxN, CodeExceededMaxN, "choices"); e != nil {
			return e
		}
	}
	return nil
}

func checkFields(body map[string]json.RawMessage, fields []string, limit int64, code, unit string) *CapError {
	for _, name := range fields {
		raw, ok := body[name]
		if !ok {
			continue
		}
		raw = bytes.TrimSpace(raw)
		if bytes.Equal(raw, []byte("null")) {
			continue
		}
		v, ok := number(raw)
		if !ok {
			return &CapError{Code: code, Field: name, Message: fmt.Sprintf("Invalid type for '%s': expected an integer.", name)}
		}
		if v > float64(limit) {
			return &CapError{Code: code, Field: name,
				Message: fmt.Sprintf("%s is too large: %s. This deployment allows at most %d %s per request.", name, raw, limit, unit)}
		}
	}
	return nil
}

// number reads a JSON number. A number too large for a float64 (1e999) is
// not one: it could only be meant to exceed the cap.
func number(raw []byte) (float64, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, false
	}
	return v, true
}
