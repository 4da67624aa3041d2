package e2e

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestLinearizabilityModel checks the model on small hand-made histories
// of one 40-line batch (chunk size 20, two chunks): the orders the FSM
// allows pass, and each kind of anomaly the e2e test hunts for fails.
func TestLinearizabilityModel(t *testing.T) {
	if n := (linMaxLines + linChunkSize - 1) / linChunkSize; n > linMaxChunks {
		t.Fatalf("the e2e test's batches have up to %d chunks, the model holds %d", n, linMaxChunks)
	}
	const k = "b"
	op := func(client int, call, ret int64, in linInput, out linOutput) porcupine.Operation {
		in.Key = k
		return porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret}
	}
	create := func(call, ret int64, res linResult) porcupine.Operation {
		return op(0, call, ret, linInput{Kind: linCreate, Lines: 40}, linOutput{Result: res})
	}
	read := func(call, ret int64, status string, done, total int64) porcupine.Operation {
		return op(1, call, ret, linInput{Kind: linRead}, linOutput{Result: resOK, Status: status, Completed: done, Total: total})
	}
	notFound := func(call, ret int64) porcupine.Operation {
		return op(1, call, ret, linInput{Kind: linRead}, linOutput{Result: resNotFound})
	}
	cancel := func(call, ret int64, res linResult) porcupine.Operation {
		return op(0, call, ret, linInput{Kind: linCancel}, linOutput{Result: res})
	}
	grant := func(call, ret int64, chunk uint32, token uint64, progress int64) porcupine.Operation {
		from := int64(chunk) * 20
		return op(2, call, ret, linInput{Kind: linGrant, Chunk: chunk, Token: token, From: from, To: from + 20}, linOutput{Result: resOK, Progress: progress})
	}
	put := func(call, ret int64, chunk uint32, token uint64, from, to int64, res linResult) porcupine.Operation {
		return op(2, call, ret, linInput{Kind: linPut, Chunk: chunk, Token: token, From: from, To: to}, linOutput{Result: res, Progress: to})
	}
	// putDone is a last part that asks to complete its chunk, answered
	// with whether the chunk is done.
	putDone := func(call, ret int64, chunk uint32, token uint64, from, to int64, res linResult, done bool) porcupine.Operation {
		return op(2, call, ret, linInput{Kind: linPut, Chunk: chunk, Token: token, From: from, To: to, Complete: true},
			linOutput{Result: res, Progress: to, Done: done})
	}
	complete := func(call, ret int64, chunk uint32, token uint64, res linResult) porcupine.Operation {
		return op(2, call, ret, linInput{Kind: linComplete, Chunk: chunk, Token: token}, linOutput{Result: res})
	}
	// run is chunk 0 then chunk 1 leased, committed and completed.
	run := []porcupine.Operation{
		grant(10, 11, 0, 100, 0), put(12, 13, 0, 100, 0, 20, resOK), complete(14, 15, 0, 100, resOK),
		grant(16, 17, 1, 101, 20), put(18, 19, 1, 101, 20, 40, resOK), complete(20, 21, 1, 101, resOK),
	}
	with := func(ops ...porcupine.Operation) []porcupine.Operation {
		return append(append([]porcupine.Operation{create(0, 1, resOK)}, run...), ops...)
	}
	cases := []struct {
		name  string
		hist  []porcupine.Operation
		legal bool
	}{
		{"a batch runs to completed", with(read(2, 3, "validating", 0, 0), read(4, 5, "in_progress", 0, 40),
			read(30, 31, "completed", 40, 40)), true},
		{"counts follow the parts", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			put(12, 13, 0, 100, 0, 20, resOK), read(14, 15, "in_progress", 20, 40)), true},
		{"a read older than a finished read", with(read(30, 31, "completed", 40, 40), read(32, 33, "finalizing", 40, 40)), false},
		{"a read older than a committed part", with(read(14, 14, "in_progress", 0, 40)), false},
		{"completed before the last chunk completes", with(read(19, 19, "completed", 20, 40)), false},
		{"not found after the create returned", with(notFound(2, 3)), false},
		{"not found while the create runs", []porcupine.Operation{create(0, 10, resOK), notFound(2, 3)}, true},
		{"a grant on a done chunk", with(grant(22, 23, 0, 102, 20)), false},
		{"tokens go backwards", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0), grant(12, 13, 1, 99, 20)), false},
		{"a part under a replaced lease", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			grant(12, 13, 0, 105, 0), put(14, 15, 0, 100, 0, 20, resOK)), false},
		{"an expired lease is refused", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			put(12, 13, 0, 100, 0, 20, resStale), grant(14, 15, 0, 105, 0)), true},
		{"a refused part then a success under the same lease", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			put(12, 13, 0, 100, 0, 20, resStale), put(14, 15, 0, 100, 0, 20, resOK)), false},
		{"a re-applied part", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			put(12, 13, 0, 100, 0, 20, resOK), put(14, 15, 0, 100, 0, 20, resOK), read(16, 17, "in_progress", 20, 40)), true},
		{"a grant forgets committed progress", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			put(12, 13, 0, 100, 10, 20, resConflict), put(14, 15, 0, 100, 0, 10, resOK), grant(16, 17, 0, 105, 0)), false},
		{"cancel in progress", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0), cancel(12, 13, resOK),
			read(14, 15, "cancelling", 0, 40), put(16, 17, 0, 100, 0, 20, resOK), read(18, 19, "cancelled", 20, 40)), true},
		{"a cancelled batch runs again", append([]porcupine.Operation{create(0, 1, resOK)}, cancel(2, 3, resOK),
			read(4, 5, "cancelled", 0, 0), read(6, 7, "in_progress", 0, 40)), false},
		{"cancel refused on a completed batch", with(cancel(30, 31, resConflict), read(32, 33, "completed", 40, 40)), true},
		{"cancel refused while it could run", with(cancel(2, 3, resConflict)), false},
		{"an unknown cancel takes effect late", append([]porcupine.Operation{create(0, 1, resOK)}, cancel(2, linNever, resUnknown),
			read(4, 5, "in_progress", 0, 40), read(6, 7, "cancelling", 0, 40)), true},
		{"an unknown cancel that never happened", with(cancel(2, linNever, resUnknown), read(30, 31, "completed", 40, 40)), true},
		{"an unknown part counts at most once", append([]porcupine.Operation{create(0, 1, resOK)}, grant(10, 11, 0, 100, 0),
			put(12, linNever, 0, 100, 0, 20, resUnknown), read(14, 15, "in_progress", 20, 40), read(16, 17, "in_progress", 0, 40)), false},
		{"last parts complete their chunks", append([]porcupine.Operation{create(0, 1, resOK)},
			grant(10, 11, 0, 100, 0), putDone(12, 13, 0, 100, 0, 20, resOK, true),
			grant(16, 17, 1, 101, 20), putDone(18, 19, 1, 101, 20, 40, resOK, true), read(30, 31, "completed", 40, 40)), true},
		{"a completing part answered not done, then Complete", append([]porcupine.Operation{create(0, 1, resOK)},
			grant(10, 11, 0, 100, 0), putDone(12, 13, 0, 100, 0, 20, resOK, false), complete(14, 15, 0, 100, resOK),
			grant(16, 17, 1, 101, 20), putDone(18, 19, 1, 101, 20, 40, resOK, true), read(30, 31, "completed", 40, 40)), true},
		{"a completed chunk granted again", append([]porcupine.Operation{create(0, 1, resOK)},
			grant(10, 11, 0, 100, 0), putDone(12, 13, 0, 100, 0, 20, resOK, true), grant(14, 15, 0, 105, 20)), false},
		{"a retried completing part after the batch finished", append([]porcupine.Operation{create(0, 1, resOK)},
			grant(10, 11, 0, 100, 0), putDone(12, 13, 0, 100, 0, 20, resOK, true),
			grant(16, 17, 1, 101, 20), putDone(18, 19, 1, 101, 20, 40, resOK, true), read(30, 31, "completed", 40, 40),
			putDone(32, 33, 1, 101, 20, 40, resOK, true)), true},
		{"a plain part claims its chunk done", append([]porcupine.Operation{create(0, 1, resOK)},
			grant(10, 11, 0, 100, 0), op(2, 12, 13, linInput{Kind: linPut, Chunk: 0, Token: 100, From: 0, To: 20},
				linOutput{Result: resOK, Progress: 20, Done: true})), false},
		{"an unknown completing part then a grant", append([]porcupine.Operation{create(0, 1, resOK)},
			grant(10, 11, 0, 100, 0), putDone(12, linNever, 0, 100, 0, 20, resUnknown, false), grant(14, 15, 0, 105, 20)), true},
	}
	model := linModel(20)
	for _, c := range cases {
		got := porcupine.CheckOperations(model, c.hist)
		if got != c.legal {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.legal)
		}
	}
}
