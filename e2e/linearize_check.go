package e2e

// Turning a recorded run into a porcupine history, checking it, and
// explaining a violation: the partitions porcupine cannot linearize are
// logged operation by operation and drawn with porcupine.VisualizePath.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// linFault is one fault as the visualization shows it.
type linFault struct {
	Kind, Target string
	Start, End   int64 // recorder time
}

// linHistory turns ops into porcupine operations. Every operation gets its
// batch's key: a client's create and its own reads carry it, the rest are
// looked up from keyOf (batch id -> metadata key, from the final listing).
// An operation naming a batch the listing lacks, or a key that disagrees
// with the listing, is an error: the cluster lost or mixed up a batch.
func linHistory(ops []linOp, keyOf map[string]string) ([]porcupine.Operation, error) {
	hist := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		if op.BatchID != "" {
			key, ok := keyOf[op.BatchID]
			switch {
			case !ok:
				return nil, fmt.Errorf("%s by client %d names batch %s, which the final listing lacks", linDescribe(op.In, op.Out), op.Client, op.BatchID)
			case op.In.Key != "" && op.In.Key != key:
				return nil, fmt.Errorf("%s by client %d: batch %s has key %q, the client created it as %q", linDescribe(op.In, op.Out), op.Client, op.BatchID, key, op.In.Key)
			}
			op.In.Key = key
		}
		if op.In.Key == "" {
			return nil, fmt.Errorf("%s by client %d names no batch", linDescribe(op.In, op.Out), op.Client)
		}
		hist = append(hist, porcupine.Operation{
			ClientId: op.Client, Input: op.In, Output: op.Out, Call: op.Call, Return: op.Ret,
			Metadata: linMeta{BatchID: op.BatchID, Node: op.Node},
		})
	}
	return hist, nil
}

// linMeta is what the visualization shows beside an operation.
type linMeta struct {
	BatchID, Node string
}

// String renders the metadata for the visualization.
func (m linMeta) String() string { return m.BatchID + " via " + m.Node }

// linVerdict is the outcome of checking one history.
type linVerdict struct {
	Result porcupine.CheckResult
	Took   time.Duration
	// Illegal holds, for each partition porcupine cannot linearize, its
	// operations in call order, one per line.
	Illegal []string
	// Visualization is the HTML file written, if any.
	Visualization string
}

// linCheck checks hist against the model. When it is not linearizable it
// finds the partitions (batches) at fault and draws them; with always it
// draws the whole history even when it passes. Drawings go into dir.
func linCheck(hist []porcupine.Operation, faults []linFault, clients int, timeout time.Duration, dir string, always bool) (*linVerdict, error) {
	model := linModel(linChunkSize)
	start := time.Now()
	// Without partial linearizations porcupine stops at the first
	// partition it proves illegal, and a legal history is quick.
	v := &linVerdict{Result: porcupine.CheckOperationsTimeout(model, hist, timeout)}
	v.Took = time.Since(start)
	draw := hist
	if v.Result != porcupine.Ok {
		draw = nil
		for _, part := range linPartition(hist) {
			if porcupine.CheckOperationsTimeout(model, part, timeout) != porcupine.Ok {
				v.Illegal = append(v.Illegal, linRender(part))
				draw = append(draw, part...)
			}
		}
	} else if !always {
		return v, nil
	}
	_, info := porcupine.CheckOperationsVerbose(model, draw, timeout)
	var notes []porcupine.Annotation
	for _, f := range faults {
		notes = append(notes, porcupine.Annotation{
			ClientId: clients, Tag: "faults", Start: f.Start, End: f.End,
			Description: f.Kind + " " + f.Target, BackgroundColor: "#f4cccc",
		})
	}
	info.AddAnnotations(notes)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return v, fmt.Errorf("artifacts dir: %w", err)
	}
	v.Visualization = filepath.Join(dir, "linearizability.html")
	if err := porcupine.VisualizePath(model, info, v.Visualization); err != nil {
		return v, fmt.Errorf("visualize: %w", err)
	}
	return v, nil
}

// linRender lists a partition's operations in call order: every write,
// and of the reads those whose answer differs from the read before it
// (the rest are counted).
func linRender(part []porcupine.Operation) string {
	ops := append([]porcupine.Operation(nil), part...)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	var b strings.Builder
	fmt.Fprintf(&b, "batch %s key %s:\n", ops[0].Metadata.(linMeta).BatchID, ops[0].Input.(linInput).Key)
	ms := func(ns int64) string {
		if ns == linNever {
			return "never"
		}
		return fmt.Sprintf("%.3fs", float64(ns)/1e9)
	}
	last, same := "", 0
	for _, op := range ops {
		out := op.Output.(linOutput)
		desc := linDescribe(op.Input, op.Output)
		if op.Input.(linInput).Kind == linRead && (desc == last || out.Result == resUnknown) {
			same++
			continue
		}
		if op.Input.(linInput).Kind == linRead {
			last = desc
		}
		fmt.Fprintf(&b, "  [%s, %s] client %d via %s: %s", ms(op.Call), ms(op.Return), op.ClientId, op.Metadata.(linMeta).Node, desc)
		if out.Detail != "" {
			fmt.Fprintf(&b, " (%.100s)", out.Detail)
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "  (%d reads that repeat the answer before them, or failed, not listed)\n", same)
	return b.String()
}

// linTally counts operations by kind and result, for the report.
func linTally(ops []linOp) string {
	counts := map[string]int{}
	for _, op := range ops {
		counts[op.In.Kind.String()+"/"+op.Out.Result.String()]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, counts[k])
	}
	return strings.Join(parts, " ")
}

// linKeep writes the recorded operations (history.jsonl, one JSON object
// per line, times in ns since the recorder started) and every
// coordinator's log into dir, for a look after the test.
func linKeep(dir string, ops []linOp, cc *chaosCluster) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, op := range ops {
		if err := enc.Encode(op); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "history.jsonl"), b.Bytes(), 0o644); err != nil {
		return err
	}
	for _, co := range cc.Coords {
		if err := os.WriteFile(filepath.Join(dir, co.ID+".log"), []byte(co.Log()), 0o644); err != nil {
			return err
		}
	}
	return nil
}
