// Package validate checks a batch input file (OpenAI's JSONL batch format)
// in one streaming pass and cuts it into chunks of lines.
//
// Every problem is reported as a BatchError the way OpenAI lists them on a
// failed batch (errors.data): a code, a message for humans, the request
// field concerned and the 1-based line number. The codes are:
//
//	code                    param        line  when
//	empty_file                           0     the file holds no request
//	exceeded_max_requests                0     more than Options.MaxRequests requests
//	invalid_json_line                    n     not a JSON object (blank lines in the middle too)
//	line_too_long                        n     longer than Options.MaxLineBytes
//	missing_custom_id       custom_id    n     custom_id absent, null or ""
//	invalid_custom_id       custom_id    n     custom_id is not a string
//	duplicate_custom_id     custom_id    n     custom_id already used on an earlier line
//	invalid_method          method       n     method is not "POST"
//	invalid_url             url          n     url absent or not a string
//	mismatched_endpoint     url          n     url differs from the batch's endpoint
//	missing_model           body.model   n     body absent or not an object, or no model string
//	mismatched_model        body.model   n     a model other than the first line's
//	unsupported_streaming   body.stream  n     body.stream is true
//	exceeded_max_tokens     body.<field> n     max_tokens, max_completion_tokens, max_output_tokens or
//	                                           min_tokens over Options.MaxTokens, or not a number
//	exceeded_max_n          body.<field> n     n or best_of over Options.MaxN, or not a number
//
// A line reports its first problem only. Blank lines at the end of the file
// (a trailing newline included) are not requests and are fine. A line is a
// JSON object exactly when encoding/json would decode it as one; a
// single-pass scanner (jsonscan.go) reads it without decoding it. Validate
// with an empty endpoint takes the batch's endpoint from the file's first
// url, to check a file before the batch that uses it exists.
package validate

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Error codes of BatchError.Code; see the package comment.
const (
	CodeEmptyFile           = "empty_file"
	CodeExceededMaxRequests = "exceeded_max_requests"
	CodeInvalidJSONLine     = "invalid_json_line"
	CodeLineTooLong         = "line_too_long"
	CodeMissingCustomID     = "missing_custom_id"
	CodeInvalidCustomID     = "invalid_custom_id"
	CodeDuplicateCustomID   = "duplicate_custom_id"
	CodeInvalidMethod       = "invalid_method"
	CodeInvalidURL          = "invalid_url"
	CodeMismatchedEndpoint  = "mismatched_endpoint"
	CodeMissingModel        = "missing_model"
	CodeMismatchedModel     = "mismatched_model"
	CodeUnsupportedStream   = "unsupported_streaming"
	CodeExceededMaxTokens   = "exceeded_max_tokens"
	CodeExceededMaxN        = "exceeded_max_n"
)

// Defaults of Options.
const (
	DefaultMaxRequests  = 50000
	DefaultChunkSize    = 500
	DefaultMaxErrors    = 100
	DefaultMaxLineBytes = 10 << 20
)

// Options bound a validation. Zero fields take the defaults above.
type Options struct {
	// MaxRequests is the most requests one batch may hold (OpenAI: 50,000).
	MaxRequests int
	// ChunkSize is how many lines make one chunk, the unit an agent leases.
	ChunkSize int
	// MaxErrors is how many errors are listed; the scan stops there, as
	// OpenAI stops listing after its first errors.
	MaxErrors int
	// MaxLineBytes caps one line; a longer line is a line_too_long error and
	// is skipped without being held in memory.
	MaxLineBytes int
	// MaxTokens caps what one request may ask the engine to generate: a
	// line whose body sets max_tokens, max_completion_tokens,
	// max_output_tokens or min_tokens above it is an exceeded_max_tokens
	// error. Zero is no cap. A request that sets none of them gets the
	// engine's own default (vLLM: the rest of the model's context).
	MaxTokens int64
	// MaxN caps the choices one request may ask for: a body with n or
	// best_of above it is an exceeded_max_n error. Zero is no cap.
	MaxN int64
}

// WithDefaults returns o with every zero field set to its default.
func (o Options) WithDefaults() Options {
	if o.MaxRequests <= 0 {
		o.MaxRequests = DefaultMaxRequests
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.MaxErrors <= 0 {
		o.MaxErrors = DefaultMaxErrors
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = DefaultMaxLineBytes
	}
	return o
}

// Chunk is a contiguous range of request lines.
type Chunk struct {
	// StartLine and EndLine are 0-based line numbers, EndLine exclusive.
	StartLine, EndLine int64
	// StartOffset and EndOffset are the byte range of those lines in the
	// file, EndOffset exclusive and just past the last line's newline.
	StartOffset, EndOffset int64
}

// Result is the outcome of Validate. When Errors is empty the file is a
// valid batch: Chunks cover lines [0, Total) contiguously. When it is not,
// the scan may have stopped early and Total and Chunks describe only the
// part read.
type Result struct {
	// Model is the model every request names.
	Model string
	// Endpoint is the endpoint the urls were checked against: the one
	// given to Validate, or when that was "", the url of the first request
	// whose url was read ("" if none was).
	Endpoint string
	// Total is the number of request lines.
	Total  int64
	Chunks []Chunk
	Errors []*vbatchv1.BatchError
}

// Validate reads a batch input file once and checks every line against
// endpoint (the batch's endpoint, such as "/v1/chat/completions"). Problems
// in the file are reported in Result.Errors; the error return is only for a
// failing reader.
//
// An empty endpoint is taken from the file: the url of the first request
// whose url is read (lines before it have failed earlier checks) becomes
// the endpoint every later url must match, as a given endpoint would, and
// Result.Endpoint reports it. This checks a file at upload time, before the
// batch that will use it names its endpoint.
func Validate(r io.Reader, endpoint string, opts Options) (*Result, error) {
	opts = opts.WithDefaults()
	v := &validator{opts: opts, endpoint: endpoint, seen: make(map[[sha256.Size]byte]struct{})}
	lr := newLineReader(r, opts.MaxLineBytes)
	var (
		idx      int64   // 0-based index of the next line
		blanks   []int64 // blank lines not yet known to be trailing
		bounds   []int64 // start offset of every ChunkSize-th line
		total    int64   // last non-blank line + 1
		lastEnd  int64   // end offset of the last non-blank line
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
		// A request follows, so the blank lines before it were in the middle.
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

// validator holds the state of one Validate pass.
type validator struct {
	opts     Options
	endpoint string
	model    string
	// seen holds the sha256 of every custom_id so far: a fixed 32 bytes per
	// request however long the ids are.
	seen map[[sha256.Size]byte]struct{}
	errs []*vbatchv1.BatchError
	// line is the scan of the current line, reused from line to line.
	line lineScan
}

// fail records an error on the 0-based line i (-1: no line) and reports
// whether the error list is full and the scan should stop.
func (v *validator) fail(i int64, code, param, msg string) bool {
	v.errs = append(v.errs, &vbatchv1.BatchError{Code: code, Message: msg, Param: param, Line: i + 1})
	return len(v.errs) >= v.opts.MaxErrors
}

// checkLine validates one request line and reports whether the scan should
// stop.
func (v *validator) checkLine(i int64, data []byte) bool {
	ls := &v.line
	if !ls.scan(data) {
		return v.fail(i, CodeInvalidJSONLine, "", "Line is not a valid JSON object.")
	}
	customID, code := stringValue(ls.top[topCustomID])
	switch code {
	case fieldMissing:
		return v.fail(i, CodeMissingCustomID, "custom_id", "Request is missing the required 'custom_id' field.")
	case fieldNotString:
		return v.fail(i, CodeInvalidCustomID, "custom_id", "The 'custom_id' field must be a string.")
	}
	if method, _ := stringValue(ls.top[topMethod]); string(method) != "POST" {
		return v.fail(i, CodeInvalidMethod, "method", fmt.Sprintf("Invalid method %q; only POST is supported.", string(method)))
	}
	url, code := stringValue(ls.top[topURL])
	if code != fieldOK {
		return v.fail(i, CodeInvalidURL, "url", "Request is missing the required 'url' field.")
	}
	if v.endpoint == "" {
		// No endpoint given: the first url read is the batch's (a url is
		// never empty, so this happens once).
		v.endpoint = string(url)
	}
	if string(url) != v.endpoint {
		return v.fail(i, CodeMismatchedEndpoint, "url", fmt.Sprintf("The url %q does not match the batch endpoint %q.", string(url), v.endpoint))
	}
	if !ls.bodyObject() {
		return v.fail(i, CodeMissingModel, "body.model", "Request is missing a 'body' object with a 'model'.")
	}
	model, code := stringValue(ls.body[bodyModel])
	if code != fieldOK {
		return v.fail(i, CodeMissingModel, "body.model", "Request body is missing the required 'model' field.")
	}
	if string(ls.body[bodyStream]) == "true" {
		return v.fail(i, CodeUnsupportedStream, "body.stream", "Streaming is not supported in a batch; remove 'stream' or set it to false.")
	}
	if ce := checkCaps((*[numCapFields][]byte)(ls.body[bodyCaps:]), v.opts.MaxTokens, v.opts.MaxN); ce != nil {
		return v.fail(i, ce.Code, "body."+ce.Field, ce.Message)
	}
	sum := sha256.Sum256(customID)
	if _, dup := v.seen[sum]; dup {
		return v.fail(i, CodeDuplicateCustomID, "custom_id", fmt.Sprintf("The custom_id %q is used by an earlier request; custom_id values must be unique.", string(customID)))
	}
	v.seen[sum] = struct{}{}
	if v.model == "" {
		v.model = string(model)
	} else if string(model) != v.model {
		return v.fail(i, CodeMismatchedModel, "body.model", fmt.Sprintf("The model %q differs from the model %q of the batch's first request; a batch uses one model.", string(model), v.model))
	}
	return false
}
