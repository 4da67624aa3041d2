package sim

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/vbatch/vbatch/internal/ids"
)

// usage is OpenAI's token usage object.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// inference returns the handler of an inference endpoint.
func (s *Server) inference(k kind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		arrival := time.Now()
		if r.Method != http.MethodPost {
			writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", nil, "use POST")
			return
		}
		if !s.authorized(w, r) {
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		if err != nil {
			status := http.StatusBadRequest
			if errors.As(err, new(*http.MaxBytesError)) {
				status = http.StatusRequestEntityTooLarge
			}
			writeError(w, status, "invalid_request_error", nil, fmt.Sprintf("read body: %v", err))
			return
		}
		j, aerr := s.parse(k, body)
		if aerr != nil {
			writeError(w, aerr.status, aerr.typ, aerr.code, aerr.msg)
			return
		}
		if fraction(body, "error") < s.cfg.ErrorRate {
			writeError(w, http.StatusInternalServerError, "server_error", nil, "simulated engine error")
			s.countAnswer(w, http.StatusInternalServerError)
			return
		}
		st := s.models[j.model]
		if !s.acquire(r.Context(), st) {
			return // the client went away while queued
		}
		if s.cfg.CrashOn != "" && bytes.Contains(body, []byte(s.cfg.CrashOn)) {
			// The poison request runs a moment, beside the others, then
			// takes the engine down.
			if sleep(r.Context(), s.cfg.Latency) {
				s.cfg.Crash()
			}
			s.release(st)
			return
		}
		status := s.run(w, r, j, body, arrival)
		s.release(st)
		if status != 0 {
			s.countAnswer(w, status)
		}
	}
}

// run generates the answer to j while holding a sequence slot. It returns
// the status sent, or 0 when the client went away first.
func (s *Server) run(w http.ResponseWriter, r *http.Request, j *job, body []byte, arrival time.Time) int {
	ctx := r.Context()
	first := s.cfg.Latency
	if s.cfg.SpikeLatency > 0 && fraction(body, "spike") < s.cfg.SpikeRate {
		first += s.cfg.SpikeLatency
	}
	if !sleep(ctx, first) {
		return 0
	}
	ttft := time.Since(arrival)
	var status int
	if j.stream {
		status = s.stream(w, r, j)
	} else {
		if !sleep(ctx, s.decodeTime(j.maxTokens)) {
			return 0
		}
		status = http.StatusOK
		writeJSON(w, status, s.answer(j))
	}
	if status == http.StatusOK {
		s.metrics.observe(j.model, j.promptTokens, j.generatedTokens(), time.Since(arrival), ttft)
	}
	return status
}

// decodeTime is how long one sequence takes to generate n tokens.
func (s *Server) decodeTime(n int) time.Duration {
	if s.cfg.TokensPerSecond <= 0 || n <= 0 {
		return 0
	}
	return time.Duration(float64(n) / s.cfg.TokensPerSecond * float64(time.Second))
}

// answer builds the non-streamed response object of j.
func (s *Server) answer(j *job) any {
	created := time.Now().Unix()
	u := usage{PromptTokens: j.promptTokens, CompletionTokens: j.generatedTokens()}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	switch j.kind {
	case kindChat:
		type msg struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		}
		type choice struct {
			Index        int     `json:"index"`
			Message      msg     `json:"message"`
			Logprobs     *string `json:"logprobs"`
			FinishReason string  `json:"finish_reason"`
		}
		choices := make([]choice, len(j.seeds))
		for i, seed := range j.seeds {
			text := strings.Join(replyTokens(seed, j.maxTokens), "")
			choices[i] = choice{Index: i, Message: msg{Role: "assistant", Content: text}, FinishReason: "length"}
		}
		return struct {
			ID      string   `json:"id"`
			Object  string   `json:"object"`
			Created int64    `json:"created"`
			Model   string   `json:"model"`
			Choices []choice `json:"choices"`
			Usage   usage    `json:"usage"`
		}{"chatcmpl-" + ids.Random(24), "chat.completion", created, j.model, choices, u}
	case kindCompletion:
		choices := make([]textChoice, len(j.seeds))
		for i, seed := range j.seeds {
			choices[i] = textChoice{Index: i, Text: strings.Join(replyTokens(seed, j.maxTokens), ""), FinishReason: ptr("length")}
		}
		return struct {
			ID      string       `json:"id"`
			Object  string       `json:"object"`
			Created int64        `json:"created"`
			Model   string       `json:"model"`
			Choices []textChoice `json:"choices"`
			Usage   usage        `json:"usage"`
		}{"cmpl-" + ids.Random(24), "text_completion", created, j.model, choices, u}
	default:
		type embedding struct {
			Index     int    `json:"index"`
			Object    string `json:"object"`
			Embedding any    `json:"embedding"`
		}
		data := make([]embedding, len(j.seeds))
		for i, seed := range j.seeds {
			v := unitVector(seed)
			data[i] = embedding{Index: i, Object: "embedding", Embedding: v}
			if j.base64 {
				data[i].Embedding = encodeFloats(v)
			}
		}
		type embUsage struct {
			PromptTokens int `json:"prompt_tokens"`
			TotalTokens  int `json:"total_tokens"`
		}
		return struct {
			ID      string      `json:"id"`
			Object  string      `json:"object"`
			Created int64       `json:"created"`
			Model   string      `json:"model"`
			Data    []embedding `json:"data"`
			Usage   embUsage    `json:"usage"`
		}{"embd-" + ids.Random(24), "list", created, j.model, data, embUsage{j.promptTokens, j.promptTokens}}
	}
}

// textChoice is a choice of a completions response or chunk.
type textChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     *string `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

func ptr[T any](v T) *T { return &v }

// encodeFloats is the base64 encoding_format: little-endian float32s.
func encodeFloats(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers an OpenAI error object.
func writeError(w http.ResponseWriter, status int, typ string, code *string, msg string) {
	type body struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}
	writeJSON(w, status, struct {
		Error body `json:"error"`
	}{body{Message: msg, Type: typ, Code: code}})
}
