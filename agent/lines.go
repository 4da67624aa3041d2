package agent

import (
	"bytes"
	"encoding/json"
	"fmt"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// inputLine is one request of a batch input file. Body stays raw: the
// engine gets exactly the bytes the user uploaded.
type inputLine struct {
	CustomID string          `json:"custom_id"`
	Method   string          `json:"method"`
	URL      string          `json:"url"`
	Body     json.RawMessage `json:"body"`
}

// parseInputLine decodes one input line. Coordinators validate input files
// before cutting chunks, so a failure here is rare; it still becomes an
// error line rather than stopping the chunk.
func parseInputLine(raw []byte) (inputLine, error) {
	var in inputLine
	if err := json.Unmarshal(raw, &in); err != nil {
		return in, fmt.Errorf("decode input line: %w", err)
	}
	if in.URL == "" {
		return in, fmt.Errorf("input line %q: url required", in.CustomID)
	}
	if len(in.Body) == 0 || bytes.Equal(in.Body, []byte("null")) {
		return in, fmt.Errorf("input line %q: body required", in.CustomID)
	}
	return in, nil
}

// outputLine is one line of an output or error file, in OpenAI's format:
// a response (any status) or, when no response came, an error.
type outputLine struct {
	ID       string          `json:"id"`
	CustomID *string         `json:"custom_id"`
	Response *outputResponse `json:"response"`
	Error    *outputError    `json:"error"`
}

type outputResponse struct {
	StatusCode int             `json:"status_code"`
	RequestID  string          `json:"request_id"`
	Body       json.RawMessage `json:"body"`
}

type outputError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes of error lines that carry no response.
const (
	errCodeEngineUnavailable = "engine_unavailable"
	errCodeInvalidRequest    = "invalid_request"
	errCodeEngineCrashed     = "engine_crashed"
)

// encodeLine renders l as one JSONL line ending in a newline. The engine's
// body is compacted onto the line without HTML escaping, so its JSON value
// is unchanged.
func encodeLine(l outputLine) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(l); err != nil {
		return nil, fmt.Errorf("encode output line %s: %w", l.ID, err)
	}
	return buf.Bytes(), nil
}

// responseBody is the engine's body as a JSON value: itself when it is
// JSON, else a JSON string of its text.
func responseBody(b []byte) json.RawMessage {
	if len(bytes.TrimSpace(b)) > 0 && json.Valid(b) {
		return json.RawMessage(b)
	}
	s, _ := json.Marshal(string(b))
	return s
}

// usageFields is the usage object of chat/completions/embeddings bodies
// (prompt/completion) and of /v1/responses bodies (input/output).
type usageFields struct {
	PromptTokens        int64 `json:"prompt_tokens"`
	CompletionTokens    int64 `json:"completion_tokens"`
	InputTokens         int64 `json:"input_tokens"`
	OutputTokens        int64 `json:"output_tokens"`
	TotalTokens         int64 `json:"total_tokens"`
	PromptTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	InputTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	CompletionTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
	OutputTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
}

// parseUsage reads the token usage of a successful engine body. A body
// without usage counts zero.
func parseUsage(body []byte) *vbatchv1.Usage {
	var doc struct {
		Usage *usageFields `json:"usage"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Usage == nil {
		return &vbatchv1.Usage{}
	}
	u := doc.Usage
	out := &vbatchv1.Usage{
		InputTokens:     u.PromptTokens + u.InputTokens,
		OutputTokens:    u.CompletionTokens + u.OutputTokens,
		TotalTokens:     u.TotalTokens,
		CachedTokens:    u.PromptTokensDetails.CachedTokens + u.InputTokensDetails.CachedTokens,
		ReasoningTokens: u.CompletionTokensDetails.ReasoningTokens + u.OutputTokensDetails.ReasoningTokens,
	}
	if out.TotalTokens == 0 {
		out.TotalTokens = out.InputTokens + out.OutputTokens
	}
	return out
}
