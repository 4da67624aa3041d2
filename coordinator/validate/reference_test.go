package validate

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// This file keeps the map-based implementation that Validate used before
// the single-pass scanner (jsonscan.go) replaced it: every line decoded by
// encoding/json into map[string]json.RawMessage, every field decoded again
// by json.Unmarshal. It is the oracle of the differential tests and of
// BenchmarkValidate. Only the adoption of an empty endpoint (the
// Result.Endpoint feature, which came with the scanner) was added to it.

// referenceValidate is Validate as it was, line for line.
func referenceValidate(r io.Reader, endpoint string, opts Options) (*Result, error) {
	opts = opts.WithDefaults()
	v := &refValidator{opts: opts, endpoint: endpoint, seen: make(map[[sha256.Size]byte]struct{})}
	lr := newLineReader(r, opts.MaxLineBytes)
	var (
		idx      int64
		blanks   []int64
		bounds   []int64
		total    int64
		lastEnd  int64
		chunkLen = int64(opts.ChunkSize)
	)
scan:
	for {
		l, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		i := idx
		idx++
		if i%chunkLen == 0 {
			bounds = append(bounds, l.start)
		}
		if !l.tooLong && isBlank(l.data) {
			if len(blanks) < opts.MaxErrors {
				blanks = append(blanks, i)
			}
			continue
		}
		for _, b := range blanks {
			if v.fail(b, CodeInvalidJSONLine, "", "Line is blank; every line must be a JSON request object.") {
				break scan
			}
		}
		blanks = blanks[:0]
		total, lastEnd = i+1, l.end
		if total > int64(opts.MaxRequests) {
			v.fail(-1, CodeExceededMaxRequests, "", fmt.Sprintf("The batch input file holds more than the maximum of %d requests.", opts.MaxRequests))
			break
		}
		if l.tooLong {
			if v.fail(i, CodeLineTooLong, "", fmt.Sprintf("Line is longer than the maximum of %d bytes.", opts.MaxLineBytes)) {
				break
			}
			continue
		}
		if v.checkLine(i, l.data) {
			break
		}
	}
	if total == 0 && len(v.errs) == 0 {
		v.fail(-1, CodeEmptyFile, "", "The batch input file holds no requests.")
	}
	res := &Result{Model: v.model, Endpoint: v.endpoint, Total: total, Errors: v.errs}
	for k := int64(0); k*chunkLen < total; k++ {
		c := Chunk{StartLine: k * chunkLen, EndLine: min((k+1)*chunkLen, total), StartOffset: bounds[k], EndOffset: lastEnd}
		if c.EndLine < total {
			c.EndOffset = bounds[k+1]
		}
		res.Chunks = append(res.Chunks, c)
	}
	return res, nil
}

type refValidator struct {
	opts     Options
	endpoint string
	model    string
	seen     map[[sha256.Size]byte]struct{}
	errs     []*vbatchv1.BatchError
}

func (v *refValidator) fail(i int64, code, param, msg string) bool {
	v.errs = append(v.errs, &vbatchv1.BatchError{Code: code, Message: msg, Param: param, Line: i + 1})
	return len(v.errs) >= v.opts.MaxErrors
}

func (v *refValidator) checkLine(i int64, data []byte) bool {
	req, ok := parseObject(data)
	if !ok {
		return v.fail(i, CodeInvalidJSONLine, "", "Line is not a valid JSON object.")
	}
	customID, code := stringField(req, "custom_id")
	switch code {
	case fieldMissing:
		return v.fail(i, CodeMissingCustomID, "custom_id", "Request is missing the required 'custom_id' field.")
	case fieldNotString:
		return v.fail(i, CodeInvalidCustomID, "custom_id", "The 'custom_id' field must be a string.")
	}
	if method, _ := stringField(req, "method"); method != "POST" {
		return v.fail(i, CodeInvalidMethod, "method", fmt.Sprintf("Invalid method %q; only POST is supported.", method))
	}
	url, code := stringField(req, "url")
	if code != fieldOK {
		return v.fail(i, CodeInvalidURL, "url", "Request is missing the required 'url' field.")
	}
	if v.endpoint == "" {
		v.endpoint = url // the one addition: an empty endpoint is adopted
	}
	if url != v.endpoint {
		return v.fail(i, CodeMismatchedEndpoint, "url", fmt.Sprintf("The url %q does not match the batch endpoint %q.", url, v.endpoint))
	}
	body, ok := parseObject(req["body"])
	if !ok {
		return v.fail(i, CodeMissingModel, "body.model", "Request is missing a 'body' object with a 'model'.")
	}
	model, code := stringField(body, "model")
	if code != fieldOK {
		return v.fail(i, CodeMissingModel, "body.model", "Request body is missing the required 'model' field.")
	}
	if s, ok := body["stream"]; ok && bytes.Equal(bytes.TrimSpace(s), []byte("true")) {
		return v.fail(i, CodeUnsupportedStream, "body.stream", "Streaming is not supported in a batch; remove 'stream' or set it to false.")
	}
	if ce := refCheckCaps(body, v.opts.MaxTokens, v.opts.MaxN); ce != nil {
		return v.fail(i, ce.Code, "body."+ce.Field, ce.Message)
	}
	sum := sha256.Sum256([]byte(customID))
	if _, dup := v.seen[sum]; dup {
		return v.fail(i, CodeDuplicateCustomID, "custom_id", fmt.Sprintf("The custom_id %q is used by an earlier request; custom_id values must be unique.", customID))
	}
	v.seen[sum] = struct{}{}
	if v.model == "" {
		v.model = model
	} else if model != v.model {
		return v.fail(i, CodeMismatchedModel, "body.model", fmt.Sprintf("The model %q differs from the model %q of the batch's first request; a batch uses one model.", model, v.model))
	}
	return false
}

func stringField(obj map[string]json.RawMessage, key string) (string, int) {
	raw, ok := obj[key]
	if !ok {
		return "", fieldMissing
	}
	raw = bytes.TrimSpace(raw)
	if bytes.Equal(raw, []byte("null")) {
		return "", fieldMissing
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldNotString
	}
	if s == "" {
		return "", fieldMissing
	}
	return s, fieldOK
}

func parseObject(data []byte) (map[string]json.RawMessage, bool) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, false
	}
	return obj, true
}

// refCheckCaps, refCheckFields and refNumber are CheckCaps as it was.
func refCheckCaps(body map[string]json.RawMessage, maxTokens, maxN int64) *CapError {
	if maxTokens > 0 {
		if e := refCheckFields(body, []string{"max_tokens", "max_completion_tokens", "max_output_tokens", "min_tokens"}, maxTokens, CodeExceededMaxTokens, "tokens"); e != nil {
			return e
		}
	}
	if maxN > 0 {
		if e := refCheckFields(body, []string{"n", "best_of"}, maxN, CodeExceededMaxN, "choices"); e != nil {
			return e
		}
	}
	return nil
}

func refCheckFields(body map[string]json.RawMessage, fields []string, limit int64, code, unit string) *CapError {
	for _, name := range fields {
		raw, ok := body[name]
		if !ok {
			continue
		}
		raw = bytes.TrimSpace(raw)
		if bytes.Equal(raw, []byte("null")) {
			continue
		}
		v, ok := refNumber(raw)
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

func refNumber(raw []byte) (float64, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, false
	}
	return v, true
}
