package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/vbatch/vbatch/internal/ids"
)

// chatDelta is the delta of a streamed chat choice.
type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// chatChunkChoice is a choice of a chat.completion.chunk.
type chatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     *string   `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

// chunk is one server-sent event of a streamed answer. Choices is an empty
// array (not absent) in the final usage chunk, as OpenAI sends it.
type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices any    `json:"choices"`
	Usage   *usage `json:"usage,omitempty"`
}

// sseWriter writes server-sent events and notices a client that left.
type sseWriter struct {
	w   http.ResponseWriter
	f   http.Flusher
	err error
}

func (e *sseWriter) data(v any) {
	if e.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		e.err = fmt.Errorf("encode chunk: %w", err)
		return
	}
	e.raw(b)
}

func (e *sseWriter) raw(b []byte) {
	if e.err != nil {
		return
	}
	if _, err := fmt.Fprintf(e.w, "data: %s\n\n", b); err != nil {
		e.err = err
		return
	}
	if e.f != nil {
		e.f.Flush()
	}
}

// stream sends j as server-sent events, one chunk per generated token and
// choice, paced at TokensPerSecond. It returns 200, or 0 when the client
// went away before the end.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, j *job) int {
	ctx := r.Context()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	f, _ := w.(http.Flusher)
	out := &sseWriter{w: w, f: f}

	base := chunk{Created: time.Now().Unix(), Model: j.model}
	if j.kind == kindChat {
		base.ID, base.Object = "chatcmpl-"+ids.Random(24), "chat.completion.chunk"
	} else {
		base.ID, base.Object = "cmpl-"+ids.Random(24), "text_completion"
	}
	send := func(choices any) {
		c := base
		c.Choices = choices
		out.data(c)
	}
	tokens := make([][]string, len(j.seeds))
	for i, seed := range j.seeds {
		tokens[i] = replyTokens(seed, j.maxTokens)
	}
	if j.kind == kindChat {
		for i := range j.seeds {
			send([]chatChunkChoice{{Index: i, Delta: chatDelta{Role: "assistant", Content: ptr("")}}})
		}
	}
	start := time.Now()
	for t := range j.maxTokens {
		if !sleep(ctx, time.Until(start.Add(s.decodeTime(t+1)))) {
			return 0
		}
		for i := range j.seeds {
			if j.kind == kindChat {
				send([]chatChunkChoice{{Index: i, Delta: chatDelta{Content: &tokens[i][t]}}})
			} else {
				send([]textChoice{{Index: i, Text: tokens[i][t]}})
			}
		}
		if out.err != nil {
			return 0
		}
	}
	for i := range j.seeds {
		if j.kind == kindChat {
			send([]chatChunkChoice{{Index: i, FinishReason: ptr("length")}})
		} else {
			send([]textChoice{{Index: i, FinishReason: ptr("length")}})
		}
	}
	if j.includeUsage {
		c := base
		c.Choices = []struct{}{}
		c.Usage = &usage{PromptTokens: j.promptTokens, CompletionTokens: j.generatedTokens()}
		c.Usage.TotalTokens = c.Usage.PromptTokens + c.Usage.CompletionTokens
		out.data(c)
	}
	out.raw([]byte("[DONE]"))
	if out.err != nil {
		return 0
	}
	return http.StatusOK
}
