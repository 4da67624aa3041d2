package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// kind is the endpoint an inference request came to.
type kind int

const (
	kindChat kind = iota
	kindCompletion
	kindEmbedding
)

// Bounds on what one request may ask for, so a hostile body cannot make
// the simulator allocate without limit.
const (
	maxTokensLimit = 1 << 16
	maxChoices     = 128
)

// request is the part of an OpenAI request body the simulator reads.
type request struct {
	Model               string          `json:"model"`
	Messages            []message       `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	EncodingFormat string `json:"encoding_format"`
}

type message struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// job is a validated request: what to generate and what it costs.
type job struct {
	kind         kind
	model        string
	promptTokens int
	maxTokens    int        // generated tokens per choice
	seeds        [][32]byte // one per choice (chat, completions) or input (embeddings)
	stream       bool
	includeUsage bool
	base64       bool
}

// generatedTokens is the total number of tokens the job generates.
func (j *job) generatedTokens() int { return j.maxTokens * len(j.seeds) }

// apiError is a request the simulator refuses, with the status and
// OpenAI error fields to answer.
type apiError struct {
	status int
	typ    string
	code   *string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: "invalid_request_error", msg: fmt.Sprintf(format, args...)}
}

// parse validates body for endpoint k and turns it into a job.
func (s *Server) parse(k kind, body []byte) (*job, *apiError) {
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, badRequest("invalid JSON body: %v", err)
	}
	j := &job{kind: k, model: req.Model, stream: req.Stream}
	if j.model == "" {
		j.model = s.cfg.Models[0]
	}
	if _, ok := s.models[j.model]; !ok {
		code := "model_not_found"
		return nil, &apiError{status: http.StatusNotFound, typ: "invalid_request_error", code: &code,
			msg: fmt.Sprintf("The model `%s` does not exist.", j.model)}
	}
	if req.StreamOptions != nil {
		if !req.Stream {
			return nil, badRequest("stream_options is only allowed when stream is true")
		}
		j.includeUsage = req.StreamOptions.IncludeUsage
	}
	if k == kindEmbedding {
		return s.parseEmbedding(j, &req)
	}
	j.maxTokens = DefaultMaxTokens
	if req.MaxCompletionTokens != nil {
		j.maxTokens = *req.MaxCompletionTokens
	} else if req.MaxTokens != nil {
		j.maxTokens = *req.MaxTokens
	}
	if j.maxTokens < 1 || j.maxTokens > maxTokensLimit {
		return nil, badRequest("max_tokens must be between 1 and %d, got %d", maxTokensLimit, j.maxTokens)
	}
	n := 1
	if req.N != nil {
		n = *req.N
	}
	if n < 1 || n > maxChoices {
		return nil, badRequest("n must be between 1 and %d, got %d", maxChoices, n)
	}
	var inputs []string
	if k == kindChat {
		if len(req.Messages) == 0 {
			return nil, badRequest("messages is required and must not be empty")
		}
		key := ""
		for i, m := range req.Messages {
			text, err := messageText(m.Content)
			if err != nil {
				return nil, badRequest("messages[%d].content: %v", i, err)
			}
			j.promptTokens += countWords(text) + perMessageTokens
			d := digest(key, m.Role, text)
			key = string(d[:])
		}
		inputs = []string{key}
	} else {
		texts, tokens, err := prompts(req.Prompt)
		if err != nil {
			return nil, badRequest("prompt %v", err)
		}
		if len(texts)*n > maxChoices {
			return nil, badRequest("prompts × n must be at most %d", maxChoices)
		}
		for _, t := range tokens {
			j.promptTokens += t
		}
		inputs = texts
	}
	for _, in := range inputs {
		for c := range n {
			j.seeds = append(j.seeds, digest(j.model, in, fmt.Sprint(c)))
		}
	}
	return j, nil
}

func (s *Server) parseEmbedding(j *job, req *request) (*job, *apiError) {
	if req.Stream {
		return nil, badRequest("embeddings cannot be streamed")
	}
	switch req.EncodingFormat {
	case "", "float":
	case "base64":
		j.base64 = true
	default:
		return nil, badRequest("encoding_format must be float or base64, got %q", req.EncodingFormat)
	}
	texts, tokens, err := prompts(req.Input)
	if err != nil {
		return nil, badRequest("input %v", err)
	}
	if len(texts) > 2048 {
		return nil, badRequest("input may hold at most 2048 items")
	}
	for i, t := range texts {
		j.promptTokens += tokens[i]
		j.seeds = append(j.seeds, digest(j.model, "embedding", t))
	}
	return j, nil
}
