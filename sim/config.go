// Package sim is a simulator of the vLLM OpenAI-compatible server. It
// answers chat completions, completions and embeddings with deterministic
// outputs derived from the input, models vLLM's throughput (a bounded
// number of concurrent sequences, each decoding at a fixed speed), injects
// faults on request, and exports vLLM's Prometheus metrics. It backs the
// "sim" engine of the agent, `vbatch sim`, and the end-to-end tests.
package sim

import (
	"os"
	"time"
)

// DefaultModel is the model served when Config.Models is empty.
const DefaultModel = "sim-model"

// DefaultMaxTokens is the number of tokens generated when a request sets
// neither max_tokens nor max_completion_tokens.
const DefaultMaxTokens = 16

// DefaultMaxNumSeqs is the concurrency bound used when Config.MaxNumSeqs
// is zero, vLLM's own default for --max-num-seqs.
const DefaultMaxNumSeqs = 256

// EmbeddingDim is the length of every embedding vector the simulator returns.
const EmbeddingDim = 64

// Config says what the simulator serves and how it behaves.
type Config struct {
	// Addr is the listen address of Run, e.g. "127.0.0.1:8100". Empty means
	// "127.0.0.1:8100". Ignored by New and Serve.
	Addr string

	// Models are the model names served. A request naming another model is
	// answered 404, as vLLM does; a request naming none gets the first.
	// Empty means []string{DefaultModel}.
	Models []string

	// Latency is the base time every inference request takes once it holds
	// a sequence slot; in a streamed answer it is the time to first token.
	Latency time.Duration

	// TokensPerSecond is the decode speed of one sequence. A request that
	// generates T tokens holds its slot for Latency + T/TokensPerSecond.
	// Zero means decoding is instant.
	TokensPerSecond float64

	// MaxNumSeqs bounds the requests running at once; the rest wait in
	// arrival order, as vLLM queues beyond --max-num-seqs. Zero means
	// DefaultMaxNumSeqs.
	MaxNumSeqs int

	// ErrorRate is the fraction of inference requests answered 500. Which
	// requests fail is decided by a hash of the request body, so the same
	// body always gets the same answer and test runs are reproducible.
	ErrorRate float64

	// SpikeRate is the fraction of inference requests (again chosen by a
	// hash of the body) that take SpikeLatency longer than the others.
	SpikeRate float64

	// SpikeLatency is the extra latency of a spiked request.
	SpikeLatency time.Duration

	// CrashAfter, when positive, makes the simulator call Crash once it has
	// answered that many inference requests, to test engine failure.
	CrashAfter int64

	// CrashOn, when set, makes the simulator call Crash whenever an
	// inference request whose body contains it has run for Latency: a
	// request that crashes the engine (a "poison" request), to test that
	// the fleet isolates and fails it instead of crashing forever.
	CrashOn string

	// Crash is called by CrashAfter and CrashOn. Nil means os.Exit(1), which is what a
	// standalone simulator should do; an embedded one sets its own.
	Crash func()

	// APIKey, when set, is required as "Authorization: Bearer <key>" on
	// every /v1 endpoint (as vLLM's --api-key); /health and /metrics stay
	// open. A request without it is answered 401.
	APIKey string
}

// withDefaults returns cfg with every zero field that has a default set.
func (cfg Config) withDefaults() Config {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:8100"
	}
	if len(cfg.Models) == 0 {
		cfg.Models = []string{DefaultModel}
	}
	if cfg.MaxNumSeqs <= 0 {
		cfg.MaxNumSeqs = DefaultMaxNumSeqs
	}
	if cfg.Crash == nil {
		cfg.Crash = func() { os.Exit(1) }
	}
	return cfg
}
