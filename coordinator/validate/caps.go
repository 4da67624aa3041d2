package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
)

// numCapFields is the length of capFields.
const numCapFields = 6

// capFields are the body fields bounded by the per-deployment caps. Engines
// read each of them as a count of tokens or of choices; vLLM also honours
// min_tokens (which forces at least that many tokens) and best_of (how many
// sequences are generated for one answer), so those are capped too.
var capFields = [numCapFields]string{"max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens", "n", "best_of"}

// capGroups splits capFields by the cap that bounds them: the first four
// count tokens (Options.MaxTokens), the last two choices (Options.MaxN).
var capGroups = [...]struct {
	from, to   int
	code, unit string
}{
	{0, 4, CodeExceededMaxTokens, "tokens"},
	{4, 6, CodeExceededMaxN, "choices"},
}

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
	var vals [numCapFields][]byte
	for k, name := range capFields {
		if raw, ok := body[name]; ok {
			if raw == nil {
				raw = json.RawMessage{} // present, though empty: not a number
			}
			vals[k] = raw
		}
	}
	return checkCaps(&vals, maxTokens, maxN)
}

// checkCaps applies the caps to the raw values of capFields, in that
// order; nil is an absent field. CheckCaps reads them from a decoded body,
// Validate from its scan of the line.
func checkCaps(vals *[numCapFields][]byte, maxTokens, maxN int64) *CapError {
	for g, limit := range [...]int64{maxTokens, maxN} {
		if limit <= 0 {
			continue
		}
		grp := capGroups[g]
		for k := grp.from; k < grp.to; k++ {
			raw := vals[k]
			if raw == nil {
				continue
			}
			raw = bytes.TrimSpace(raw)
			if string(raw) == "null" {
				continue
			}
			name := capFields[k]
			v, ok := number(raw)
			if !ok {
				return &CapError{Code: grp.code, Field: name, Message: fmt.Sprintf("Invalid type for '%s': expected an integer.", name)}
			}
			if v > float64(limit) {
				return &CapError{Code: grp.code, Field: name,
					Message: fmt.Sprintf("%s is too large: %s. This deployment allows at most %d %s per request.", name, raw, limit, grp.unit)}
			}
		}
	}
	return nil
}

// number reads a JSON number. A number too large for a float64 (1e999) is
// not one: it could only be meant to exceed the cap. A plain integer of up
// to 15 digits, the usual case, is read in place: it is exact in a float64,
// as json.Unmarshal would read it.
func number(raw []byte) (float64, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false
	}
	if len(raw) <= 15 && (raw[0] != '0' || len(raw) == 1) {
		var n int64
		for _, c := range raw {
			if c < '0' || c > '9' {
				n = -1
				break
			}
			n = n*10 + int64(c-'0')
		}
		if n >= 0 {
			return float64(n), true
		}
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, false
	}
	return v, true
}
