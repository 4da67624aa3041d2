package e2e

// The sequential specification TestLinearizability checks histories
// against: one batch's state machine as the FSM applies it (fsm/
// apply_batches.go, apply_leases.go, apply_finish.go), seen through the
// HTTP API and the AgentService RPC. The history is partitioned by batch;
// each partition starts from "no such batch".
//
// Two kinds of step happen without a client asking, so the model is
// nondeterministic (porcupine's NondeterministicModel, checked as a power
// set): the leader loop's commands (StartBatch, FailBatch, BeginFinalize,
// FinishBatch) and the expiry of a lease. Before every operation any
// sequence of leader commands may have run (settle). Lease expiry is taken
// lazily: only where an operation could observe it (a lease command on
// that chunk, or a cancelling batch becoming cancelled, which needs every
// lease ended) does the model branch on it. Expiry into the "expired"
// status is not in the model: the test's batches have a 24h window.

import (
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/anishathalye/porcupine"
)

// linKind names an operation of the history.
type linKind uint8

const (
	linCreate   linKind = iota // POST /v1/batches
	linCancel                  // POST /v1/batches/{id}/cancel
	linRead                    // GET /v1/batches/{id}?consistent=true, or a consistent list
	linGrant                   // AgentService.Lease that granted a chunk
	linPut                     // AgentService.PutResults
	linComplete                // AgentService.Complete
)

var linKindNames = [...]string{"create", "cancel", "read", "grant", "put", "complete"}

func (k linKind) String() string { return linKindNames[k] }

// linResult classifies an answer.
type linResult uint8

const (
	// resOK is a 2xx answer or a connect success.
	resOK linResult = iota
	// resUnknown is an answer that does not say whether the operation took
	// effect: a timeout, a broken connection, a 5xx, connect Unavailable.
	// Such an operation returns "at the end of time" in the history.
	resUnknown
	// resNotFound is 404 or connect NotFound.
	resNotFound
	// resConflict is 409 or connect Aborted (fsm.ErrConflict).
	resConflict
	// resStale is connect FailedPrecondition (fsm.ErrStaleToken).
	resStale
	// resRefused is any other definite refusal (another 4xx, connect
	// InvalidArgument): the model accepts none.
	resRefused
)

var linResultNames = [...]string{"ok", "unknown", "not_found", "conflict", "stale", "refused"}

func (r linResult) String() string { return linResultNames[r] }

// linInput is what an operation asked.
type linInput struct {
	Kind linKind
	// Key is the partition: the batch's metadata key, set by the client
	// that created it (agent operations get it from the final listing).
	Key string
	// Lines is a create's input line count.
	Lines int64
	// Chunk and Token name a lease (grant, put, complete).
	Chunk uint32
	Token uint64
	// From and To are a put's line range, or a grant's chunk range.
	From, To int64
	// Complete is a put that asks to complete its chunk (the last part).
	Complete bool
}

// linOutput is what an operation answered.
type linOutput struct {
	Result linResult
	// Status and the counts are a read's batch object.
	Status                   string
	Total, Completed, Failed int64
	// Progress is a grant's chunk progress, or a put's progress after it.
	Progress int64
	// Done is a put's answer that the chunk is done under its token.
	Done bool
	// Detail is the error text, for the visualization only.
	Detail string
}

// Chunk states of the model, as the FSM's.
const (
	linPending uint8 = iota
	linLeased
	linDone
)

// linMaxChunks bounds the chunks of one batch in the model; the test's
// batches have at most linMaxLines/linChunkSize of them.
const linMaxChunks = 8

// linChunk is one chunk of the model.
type linChunk struct {
	State uint8
	// Token is the lease's fencing token; 0 when no lease is held (a done
	// chunk keeps its last lease, as the FSM does).
	Token    uint64
	Progress int64
	// Parts lists committed parts as "from-to@token;", for the FSM's
	// idempotent re-apply of a part.
	Parts string
}

// linState is one batch. It is a comparable value: porcupine compares
// states with ==.
type linState struct {
	// Status is the OpenAI status; "" before the create.
	Status string
	// Lines is the input's line count, known from the create.
	Lines            int64
	NChunks          int
	Total, Completed int64
	MaxToken         uint64 // highest fencing token granted so far
	Chunks           [linMaxChunks]linChunk
	chunkSize        int64
}

// linChunkRange is chunk c's line range under the coordinators'
// --chunk-size.
func (s *linState) linChunkRange(c int) (int64, int64) {
	start := int64(c) * s.chunkSize
	return start, min(start+s.chunkSize, s.Lines)
}

func linTerminal(status string) bool {
	switch status {
	case "completed", "failed", "expired", "cancelled":
		return true
	}
	return false
}

// linWritable is fsm.leaseWritable: lease holders may write while the
// batch runs or is being cancelled.
func linWritable(status string) bool { return status == "in_progress" || status == "cancelling" }

// settle returns every state the leader loop can move s to without a
// client: s itself and what StartBatch, FailBatch, BeginFinalize and
// FinishBatch (completed, cancelled) lead to.
func (s linState) settle() []linState {
	out := []linState{s}
	for i := 0; i < len(out); i++ {
		out = append(out, out[i].leaderSteps()...)
	}
	return out
}

// leaderSteps are the single leader commands that apply to s.
func (s linState) leaderSteps() []linState {
	var out []linState
	switch s.Status {
	case "validating":
		start := s
		start.Status = "in_progress"
		start.Total = s.Lines
		start.NChunks = int((s.Lines + s.chunkSize - 1) / s.chunkSize)
		for c := 0; c < start.NChunks; c++ {
			from, _ := start.linChunkRange(c)
			start.Chunks[c] = linChunk{Progress: from}
		}
		fail := s
		fail.Status = "failed"
		out = append(out, start, fail)
	case "in_progress":
		if s.allDone() {
			fin := s
			fin.Status = "finalizing"
			out = append(out, fin)
		}
	case "finalizing":
		done := s
		done.Status = "completed"
		out = append(out, done)
	case "cancelling":
		// FinishBatch(cancelled) needs every lease ended: they expired
		// first. It then ends the leases of chunks not done.
		c := s
		c.Status = "cancelled"
		for i := 0; i < c.NChunks; i++ {
			if c.Chunks[i].State == linLeased {
				c.Chunks[i].State, c.Chunks[i].Token = linPending, 0
			}
		}
		out = append(out, c)
	}
	return out
}

func (s linState) allDone() bool {
	for i := 0; i < s.NChunks; i++ {
		if s.Chunks[i].State != linDone {
			return false
		}
	}
	return true
}

// withExpiry returns s and, when chunk c holds a lease, s with that lease
// expired (ExpireLeases: the chunk is pending again, progress kept).
func (s linState) withExpiry(c int) []linState {
	if c >= s.NChunks || s.Chunks[c].State != linLeased || !linWritable(s.Status) {
		return []linState{s}
	}
	e := s
	e.Chunks[c].State, e.Chunks[c].Token = linPending, 0
	return []linState{s, e}
}

// linStep is the model's step: every state the batch can be in after the
// operation, given that it answered out. Empty means "impossible".
func linStep(s linState, in linInput, out linOutput) []linState {
	var next []linState
	for _, pre := range s.settle() {
		switch in.Kind {
		case linCreate, linCancel, linRead:
			next = append(next, linClientStep(pre, in, out)...)
		default:
			for _, e := range pre.withExpiry(int(in.Chunk)) {
				next = append(next, linLeaseStep(e, in, out)...)
			}
		}
	}
	return next
}

// linClientStep applies an HTTP operation to pre.
func linClientStep(pre linState, in linInput, out linOutput) []linState {
	effect, result := pre, resRefused
	switch in.Kind {
	case linCreate:
		// A create the API refuses (a 4xx) has no effect; a key is created
		// at most once, so a second effect is never expected.
		if pre.Status != "" {
			return nil
		}
		if out.Result == resRefused {
			return []linState{pre}
		}
		effect.Status, effect.Lines, result = "validating", in.Lines, resOK
	case linCancel:
		switch pre.Status {
		case "":
			result = resNotFound
		case "validating":
			effect.Status, result = "cancelled", resOK
		case "in_progress":
			effect.Status, result = "cancelling", resOK
		case "cancelling", "cancelled":
			result = resOK
		default: // finalizing, completed, failed, expired
			result = resConflict
		}
	case linRead:
		result = resOK
		if pre.Status == "" {
			result = resNotFound
		}
	}
	switch {
	case out.Result == resUnknown:
		return []linState{pre, effect}
	case out.Result != result:
		return nil
	case in.Kind == linRead && result == resOK:
		if out.Status != pre.Status || out.Total != pre.Total || out.Completed != pre.Completed || out.Failed != 0 {
			return nil
		}
	}
	return []linState{effect}
}

// linLeaseStep applies an AgentService operation to pre.
func linLeaseStep(pre linState, in linInput, out linOutput) []linState {
	c := int(in.Chunk)
	if pre.Status == "" || c >= pre.NChunks {
		if out.Result == resNotFound || out.Result == resUnknown {
			return []linState{pre}
		}
		return nil
	}
	switch in.Kind {
	case linGrant:
		return linGrantStep(pre, in, out)
	case linPut:
		return linPutStep(pre, in, out)
	case linComplete:
		return linCompleteStep(pre, in, out)
	}
	return nil
}

// linGrantStep is fsm.grantLease. Only granted leases are in the history
// (a Lease call that failed names no batch), and the token, the raft index
// of the grant, must exceed every token granted before it.
func linGrantStep(pre linState, in linInput, out linOutput) []linState {
	c := int(in.Chunk)
	ch := pre.Chunks[c]
	from, to := pre.linChunkRange(c)
	if out.Result != resOK || pre.Status != "in_progress" || ch.State != linPending ||
		in.Token <= pre.MaxToken || out.Progress != ch.Progress || in.From != from || in.To != to {
		return nil
	}
	next := pre
	next.Chunks[c].State, next.Chunks[c].Token = linLeased, in.Token
	next.MaxToken = in.Token
	return []linState{next}
}

// linPutStep is PutResults: a part already committed is answered at once
// (agentService.committedPart); otherwise the coordinator's early lease
// check (agentService.checkLease, on its own state, which refuses a lease
// that is gone or a batch that ended) and then fsm.commitPart, or
// fsm.completePart for a put that asks to complete the chunk. Whether a
// coordinator proposes CompletePart depends on what gossip shows it of its
// peers, so either is a legal effect of such a put; its answer's Done
// tells which happened.
func linPutStep(pre linState, in linInput, out linOutput) []linState {
	c := int(in.Chunk)
	ch := pre.Chunks[c]
	_, end := pre.linChunkRange(c)
	part := fmt.Sprintf("%d-%d@%d;", in.From, in.To, in.Token)
	effect, result := pre, resOK
	var completed *linState // the effect had the put completed the chunk
	switch {
	case strings.Contains(ch.Parts, part):
		// a re-applied part
	case !linWritable(pre.Status):
		result = resConflict
	case ch.State != linLeased || ch.Token != in.Token:
		result = resStale
	case in.From != ch.Progress:
		result = resConflict
	case in.To <= in.From || in.To > end:
		result = resRefused
	case in.Complete && in.To != end:
		result = resRefused
	default:
		effect.Chunks[c].Progress = in.To
		effect.Chunks[c].Parts += part
		effect.Completed += in.To - in.From
		if in.Complete {
			done := effect
			done.Chunks[c].State = linDone
			completed = &done
		}
	}
	early := ch.State == linPending || ch.Token != in.Token || linTerminal(pre.Status)
	doneUnder := func(st linState) bool { return st.Chunks[c].State == linDone && st.Chunks[c].Token == in.Token }
	switch {
	case out.Result == resUnknown:
		if completed != nil {
			return []linState{pre, effect, *completed}
		}
		return []linState{pre, effect}
	case out.Result == resStale && early:
		return []linState{pre}
	case out.Result != result:
		return nil
	case result == resOK && out.Progress < in.To:
		return nil
	case completed != nil && out.Done:
		return []linState{*completed}
	case out.Done != doneUnder(effect):
		return nil
	}
	return []linState{effect}
}

// linCompleteStep is fsm.completeChunk.
func linCompleteStep(pre linState, in linInput, out linOutput) []linState {
	c := int(in.Chunk)
	ch := pre.Chunks[c]
	_, end := pre.linChunkRange(c)
	effect, result := pre, resOK
	switch {
	case ch.State == linDone && ch.Token == in.Token:
		// a re-applied completion
	case !linWritable(pre.Status):
		result = resConflict
	case ch.State != linLeased || ch.Token != in.Token:
		result = resStale
	case ch.Progress != end:
		result = resConflict
	default:
		effect.Chunks[c].State = linDone
	}
	switch {
	case out.Result == resUnknown:
		return []linState{pre, effect}
	case out.Result != result:
		return nil
	}
	return []linState{effect}
}

// linModel is the porcupine model for batches cut into chunks of
// chunkSize lines.
func linModel(chunkSize int64) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: linPartition,
		Init: func() []interface{} {
			return []interface{}{linState{chunkSize: chunkSize}}
		},
		Step: func(state, input, output interface{}) []interface{} {
			next := linStep(state.(linState), input.(linInput), output.(linOutput))
			out := make([]interface{}, len(next))
			for i, s := range next {
				out[i] = s
			}
			return out
		},
		Hash: func(state interface{}) uint64 {
			h := fnv.New64a()
			fmt.Fprintf(h, "%+v", state.(linState))
			return h.Sum64()
		},
		DescribeOperation: linDescribe,
		DescribeState: func(state interface{}) string {
			return state.(linState).String()
		},
	}
	return nm.ToModel()
}

// linPartition splits a history by batch key.
func linPartition(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string]int{}
	var parts [][]porcupine.Operation
	for _, op := range history {
		k := op.Input.(linInput).Key
		i, ok := byKey[k]
		if !ok {
			i = len(parts)
			byKey[k] = i
			parts = append(parts, nil)
		}
		parts[i] = append(parts[i], op)
	}
	return parts
}

// linDescribe renders an operation for the visualization and logs.
func linDescribe(input, output interface{}) string {
	in, out := input.(linInput), output.(linOutput)
	var call string
	switch in.Kind {
	case linCreate:
		call = fmt.Sprintf("create(%d lines)", in.Lines)
	case linCancel, linRead:
		call = in.Kind.String() + "()"
	case linGrant:
		call = fmt.Sprintf("grant(chunk %d [%d,%d))", in.Chunk, in.From, in.To)
	case linPut:
		call = fmt.Sprintf("put(chunk %d [%d,%d) token %d)", in.Chunk, in.From, in.To, in.Token)
		if in.Complete {
			call = fmt.Sprintf("put+complete(chunk %d [%d,%d) token %d)", in.Chunk, in.From, in.To, in.Token)
		}
	case linComplete:
		call = fmt.Sprintf("complete(chunk %d token %d)", in.Chunk, in.Token)
	}
	res := out.Result.String()
	switch {
	case in.Kind == linRead && out.Result == resOK:
		res = fmt.Sprintf("%s %d/%d", out.Status, out.Completed, out.Total)
		if out.Failed != 0 {
			res += fmt.Sprintf(" (%d failed)", out.Failed)
		}
	case in.Kind == linGrant:
		res = fmt.Sprintf("token %d progress %d", in.Token, out.Progress)
	case in.Kind == linPut && out.Result == resOK:
		res = fmt.Sprintf("ok progress %d", out.Progress)
	}
	return call + " -> " + res
}

// String renders a state for the visualization.
func (s linState) String() string {
	if s.Status == "" {
		return "absent"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d/%d", s.Status, s.Completed, s.Total)
	for i := 0; i < s.NChunks; i++ {
		ch := s.Chunks[i]
		state := [...]string{"pending", "leased", "done"}[ch.State]
		fmt.Fprintf(&b, " c%d:%s@%d", i, state, ch.Progress)
		if ch.Token != 0 {
			fmt.Fprintf(&b, "#%d", ch.Token)
		}
	}
	return b.String()
}
