package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
)

// Token accounting. The simulator has no tokenizer, so it counts words:
//
//   - a prompt string costs one token per whitespace-separated word;
//   - a prompt given as token ids costs one token per id;
//   - a chat request costs the words of every message's text plus 4 tokens
//     per message (the role and the template's framing, roughly what chat
//     templates add);
//   - every generated token is one word of the reply, so completion_tokens
//     is exactly max_tokens (or max_completion_tokens, default 16) per
//     choice and every choice finishes with "length".

// perMessageTokens is the template overhead counted for each chat message.
const perMessageTokens = 4

// vocabulary is the words replies are made of.
var vocabulary = strings.Fields(`the a of to and in is that for it on with as was at by
an be this from or have not are but which one all were when we there can been has more
if will would who so about into than them some could these other time only new after
first also any like very just well where most over such through model batch token
vector engine graph signal kernel tensor layer cache queue stream shard lease chunk`)

// countWords returns the number of whitespace-separated words in s.
func countWords(s string) int { return len(strings.Fields(s)) }

// digest hashes the length-prefixed parts, so ("ab","c") and ("a","bc")
// differ.
func digest(parts ...string) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// stream expands a seed into an endless deterministic byte sequence
// (SHA-256 in counter mode).
type stream struct {
	seed [32]byte
	ctr  uint64
	buf  []byte
}

func (s *stream) uint32() uint32 {
	if len(s.buf) < 4 {
		var c [8]byte
		binary.BigEndian.PutUint64(c[:], s.ctr)
		s.ctr++
		sum := sha256.Sum256(append(s.seed[:], c[:]...))
		s.buf = append(s.buf, sum[:]...)
	}
	v := binary.BigEndian.Uint32(s.buf)
	s.buf = s.buf[4:]
	return v
}

// replyTokens returns the n words of the reply to the input identified by
// seed: each element is one generated token, with its leading space.
func replyTokens(seed [32]byte, n int) []string {
	s := &stream{seed: seed}
	out := make([]string, n)
	for i := range out {
		w := vocabulary[s.uint32()%uint32(len(vocabulary))]
		if i > 0 {
			w = " " + w
		}
		out[i] = w
	}
	return out
}

// unitVector returns a deterministic vector of EmbeddingDim components
// with Euclidean norm 1.
func unitVector(seed [32]byte) []float32 {
	s := &stream{seed: seed}
	v := make([]float64, EmbeddingDim)
	var norm float64
	for i := range v {
		// Uniform in [-1, 1); the all-zero vector has probability 2^-2048.
		v[i] = float64(s.uint32())/float64(1<<31) - 1
		norm += v[i] * v[i]
	}
	norm = math.Sqrt(norm)
	out := make([]float32, EmbeddingDim)
	for i := range v {
		out[i] = float32(v[i] / norm)
	}
	return out
}

// fraction maps a body and a salt to a number in [0, 1), used to pick the
// requests that fail or spike.
func fraction(body []byte, salt string) float64 {
	d := digest(salt, string(body))
	return float64(binary.BigEndian.Uint64(d[:8])>>11) / float64(1<<53)
}

// messageText extracts the text of a chat message's content: a string, an
// array of parts whose "text" fields are joined, or null.
func messageText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("content must be a string or an array of parts")
	}
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		if p.Text != "" {
			texts = append(texts, p.Text)
		}
	}
	return strings.Join(texts, " "), nil
}

// prompts decodes a completions prompt or an embeddings input: a string, an
// array of strings, an array of token ids or an array of such arrays. Each
// prompt is returned as the text that seeds its output and its token count.
func prompts(raw json.RawMessage) (texts []string, tokens []int, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil, fmt.Errorf("is required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []string{s}, []int{countWords(s)}, nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil && len(ss) > 0 {
		for _, p := range ss {
			texts = append(texts, p)
			tokens = append(tokens, countWords(p))
		}
		return texts, tokens, nil
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil && len(ids) > 0 {
		return []string{string(raw)}, []int{len(ids)}, nil
	}
	var idss [][]int64
	if json.Unmarshal(raw, &idss) == nil && len(idss) > 0 {
		for _, p := range idss {
			b, _ := json.Marshal(p)
			texts = append(texts, string(b))
			tokens = append(tokens, len(p))
		}
		return texts, tokens, nil
	}
	return nil, nil, fmt.Errorf("must be a string, an array of strings or an array of token ids, and not empty")
}
