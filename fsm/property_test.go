package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestPropertyInvariants applies random command sequences to an FSM and
// checks the invariants after every step. Commands are drawn against the
// current state, so that most are plausible (the next part of a leased
// chunk, the live token) and many are near misses (a stale token, a gap,
// a batch in the wrong status, a lease that just ran out). At the end the
// state must survive a snapshot round trip and a replay of the whole log.
func TestPropertyInvariants(t *testing.T) {
	cov := coverage{}
	rapid.Check(t, func(rt *rapid.T) {
		m := newModel()
		m.cov = cov
		for _, id := range agentIDs {
			if err := m.apply(rt, &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: id, Models: []string{"m"}}}); err != nil {
				rt.Fatal(err)
			}
		}
		// rapid leans towards small numbers; a floor keeps runs long
		// enough to take batches through their whole lifecycle.
		steps := 100 + rapid.IntRange(0, 300).Draw(rt, "steps")
		for range steps {
			m.step(rt)
		}
		// A day on, the tombstones the run left are due, and the next
		// command that succeeds prunes them (short runs rarely jump a day
		// after a delete on their own).
		if len(m.state().FileTombstones) > 0 {
			m.now = m.now.Add(FileTombstoneTTL)
			for i := 0; i < 20 && len(m.state().FileTombstones) > 0; i++ {
				m.step(rt)
			}
		}
		m.checkSnapshot(rt)
		m.checkReplay(rt)
	})
	// The coverage a generator must reach is judged on the full run: the
	// 20 runs of -short reach the rarest outcomes only now and then.
	if !testing.Short() {
		cov.check(t)
	}
}

// coverage counts what the random runs reached, so that a generator that
// stops reaching the interesting states fails the test instead of passing
// vacuously.
type coverage map[string]int

func (c coverage) check(t *testing.T) {
	t.Helper()
	var want []string
	for _, mk := range commandTypes {
		name := string(mk().ProtoReflect().Descriptor().Name())
		switch name {
		case "CreateAPIKey", "RevokeAPIKey": // no lifecycle; unit-tested
		case "RegisterAgent", "ExpireLeases", "ExtendLeases": // never refused when well-formed
			want = append(want, "ok "+name)
		default:
			want = append(want, "ok "+name, "refused "+name)
		}
	}
	want = append(want, "reapplied", "stale token refused", "tombstone kept", "tombstone pruned", "window_seconds", "expires_after_seconds",
		"reached "+statusCompleted.String(), "reached "+statusCancelled.String(),
		"reached "+statusExpired.String(), "reached "+statusFailed.String())
	for _, k := range want {
		if c[k] == 0 {
			t.Errorf("no random run reached %q; coverage: %v", k, c)
		}
	}
}

var (
	agentIDs = []string{"a1", "a2", "a3"}
	projects = []string{"p1", "p2"}
)

// model drives the FSM and remembers what the invariants need.
type model struct {
	f     *FSM
	index uint64
	now   time.Time
	// entries is the log applied so far, for the replay check.
	entries []*raft.Log
	results []*vbatchv1.Result
	// tokens is every token ever granted, to draw stale ones from.
	tokens []uint64
	// extra is the extra_failed lines each finished batch was given.
	extra map[string]int64
	// merged are the files whose parts MergeFileParts replaced, with the
	// parts they had.
	merged map[string][]*vbatchv1.BlobRef
	// counts is each batch's request counts when last seen uncompacted.
	counts map[string]*vbatchv1.RequestCounts
	seq    int
	cov    coverage
}

func newModel() *model {
	return &model{f: New(), now: time.Unix(1_700_000_000, 0), extra: map[string]int64{}, merged: map[string][]*vbatchv1.BlobRef{}, counts: map[string]*vbatchv1.RequestCounts{}}
}

func (m *model) state() *State {
	var s *State
	m.f.View(func(st *State) { s = st.Clone() })
	return s
}

func (m *model) apply(rt *rapid.T, cmd proto.Message) error {
	m.index++
	data, err := Encode(cmd, m.now)
	if err != nil {
		rt.Fatalf("encode %T: %v", cmd, err)
	}
	l := &raft.Log{Index: m.index, Type: raft.LogCommand, Data: data}
	res := m.f.Apply(l).(*vbatchv1.Result)
	m.entries, m.results = append(m.entries, l), append(m.results, res)
	if res.Code == "internal" || res.Index != m.index {
		rt.Fatalf("%T: result %v", cmd, res)
	}
	return FromResult(res)
}

// step draws one command, applies it and checks the invariants.
func (m *model) step(rt *rapid.T) {
	g := &gen{r: rand.New(rand.NewPCG(rapid.Uint64().Draw(rt, "seed"), 0)), m: m}
	if g.oneIn(4) {
		m.now = m.now.Add(g.duration())
	}
	before := m.state()
	cmd := g.command(before)
	held := m.heldFiles()
	err := m.apply(rt, cmd)
	rt.Logf("%d @%d: %T %v -> %v", m.index, m.now.UnixMilli(), cmd, cmd, err)
	after := m.state()
	m.count(cmd, err, before, after)
	if err != nil {
		if !before.Equal(after) {
			rt.Fatalf("refused %T (%v) changed the state", cmd, err)
		}
	} else {
		m.accepted(rt, before, after, cmd)
	}
	for f, was := range held {
		if !proto.Equal(f, was) {
			rt.Fatalf("%T changed stored file %s in place: %v, was %v", cmd, was.Id, f, was)
		}
	}
	checkStep(rt, before, after)
	m.checkState(rt, after)
	m.checkIndex(rt)
	if err == nil && g.oneIn(5) {
		m.checkReapply(rt, cmd)
	}
}

// heldFiles returns the FSM's own file records, each with a copy: a
// reader may keep a *File past View (State.Files), so no command may
// change one in place.
func (m *model) heldFiles() map[*vbatchv1.File]*vbatchv1.File {
	held := map[*vbatchv1.File]*vbatchv1.File{}
	m.f.View(func(s *State) {
		for _, f := range s.Files {
			held[f] = proto.Clone(f).(*vbatchv1.File)
		}
	})
	return held
}

// count records the outcome of a step in the coverage.
func (m *model) count(cmd proto.Message, err error, before, after *State) {
	name := string(cmd.ProtoReflect().Descriptor().Name())
	if err != nil {
		m.cov["refused "+name]++
		if errors.Is(err, ErrStaleToken) {
			m.cov["stale token refused"]++
		}
		return
	}
	m.cov["ok "+name]++
	for id := range after.FileTombstones {
		if _, ok := before.FileTombstones[id]; !ok {
			m.cov["tombstone kept"]++
		}
	}
	for id := range before.FileTombstones {
		if _, ok := after.FileTombstones[id]; !ok {
			m.cov["tombstone pruned"]++
		}
	}
	for id, b := range after.Batches {
		if old, ok := before.Batches[id]; ok && old.Status != b.Status {
			m.cov["reached "+b.Status.String()]++
		}
	}
}

// accepted records what a successful command means for later checks and
// checks the rules that only that command's success implies.
func (m *model) accepted(rt *rapid.T, before, after *State, cmd proto.Message) {
	switch c := cmd.(type) {
	case *vbatchv1.CreateBatch:
		b := after.Batches[c.Batch.Id]
		if c.WindowSeconds > 0 {
			m.cov["window_seconds"]++
		}
		if c.WindowSeconds > 0 && b.ExpiresAt != b.CreatedAt+c.WindowSeconds {
			rt.Fatalf("batch %s created at %d with a window of %d s expires at %d", b.Id, b.CreatedAt, c.WindowSeconds, b.ExpiresAt)
		}
		if c.Batch.CreatedAt == 0 && before.Batches[c.Batch.Id] == nil && b.CreatedAt != after.Now/1000 {
			rt.Fatalf("batch %s created at %d, not at the command's time %d", b.Id, b.CreatedAt, after.Now/1000)
		}
	case *vbatchv1.CreateFile:
		f := after.Files[c.File.Id]
		if c.ExpiresAfterSeconds > 0 {
			m.cov["expires_after_seconds"]++
		}
		if c.ExpiresAfterSeconds > 0 && f.ExpiresAt != f.CreatedAt+c.ExpiresAfterSeconds {
			rt.Fatalf("file %s created at %d to live %d s expires at %d", f.Id, f.CreatedAt, c.ExpiresAfterSeconds, f.ExpiresAt)
		}
		if c.File.CreatedAt == 0 && before.Files[c.File.Id] == nil && f.CreatedAt != after.Now/1000 {
			rt.Fatalf("file %s created at %d, not at the command's time %d", f.Id, f.CreatedAt, after.Now/1000)
		}
	case *vbatchv1.MergeFileParts:
		if was := before.Files[c.FileId]; len(was.Parts) > 1 {
			m.merged[c.FileId] = was.Parts
		}
	case *vbatchv1.GrantLease:
		m.tokens = append(m.tokens, m.index)
		if l := after.Batches[c.BatchId].Chunks[c.Chunk].Lease; l.Token != m.index {
			rt.Fatalf("grant at %d set token %d", m.index, l.Token)
		}
	case *vbatchv1.CommitPart:
		ch := before.Batches[c.BatchId].Chunks[c.Chunk]
		now := after.Batches[c.BatchId].Chunks[c.Chunk]
		if len(now.Parts) == len(ch.Parts) {
			break // a re-applied part
		}
		if !(LiveLease(ch, after.Now) && ch.Lease.Token == c.Part.Token) {
			rt.Fatalf("part with token %d accepted on chunk with lease %v at %d", c.Part.Token, ch.Lease, after.Now)
		}
		if now.State == chunkDone {
			rt.Fatalf("part [%d,%d) completed chunk %v", c.Part.FromLine, c.Part.ToLine, now)
		}
	case *vbatchv1.CompletePart:
		ch := before.Batches[c.Commit.BatchId].Chunks[c.Commit.Chunk]
		now := after.Batches[c.Commit.BatchId].Chunks[c.Commit.Chunk]
		if len(now.Parts) == len(ch.Parts) {
			break // a re-applied part
		}
		if !(LiveLease(ch, after.Now) && ch.Lease.Token == c.Commit.Part.Token) {
			rt.Fatalf("completing part with token %d accepted on chunk with lease %v at %d", c.Commit.Part.Token, ch.Lease, after.Now)
		}
		if now.State != chunkDone || now.Progress != now.EndLine || now.Lease.GetToken() != c.Commit.Part.Token {
			rt.Fatalf("completing part [%d,%d) left chunk %v", c.Commit.Part.FromLine, c.Commit.Part.ToLine, now)
		}
	case *vbatchv1.FinishBatch:
		b := before.Batches[c.BatchId]
		if IsTerminal(b.Status) {
			break
		}
		m.extra[c.BatchId] = c.ExtraFailed
		switch c.Status {
		case statusCompleted:
			if b.Status != statusFinalizing {
				rt.Fatalf("batch %s completed from %s", b.Id, b.Status)
			}
		case statusCancelled:
			for _, ch := range b.Chunks {
				if LiveLease(ch, after.Now) {
					rt.Fatalf("batch %s cancelled while chunk %d holds a live lease", b.Id, ch.Index)
				}
			}
		case statusExpired:
			if b.ExpiresAt == 0 || after.Now/1000 < b.ExpiresAt {
				rt.Fatalf("batch %s expired at %d, before its expiry %d", b.Id, after.Now, b.ExpiresAt)
			}
		}
	case *vbatchv1.CompleteChunk:
		if ch := before.Batches[c.BatchId].Chunks[c.Chunk]; ch.State != chunkDone && !(LiveLease(ch, after.Now) && ch.Lease.Token == c.Token) {
			rt.Fatalf("chunk %s/%d completed with token %d, lease %v", c.BatchId, c.Chunk, c.Token, ch.Lease)
		}
	case *vbatchv1.DeleteFile:
		if UsedByLiveBatch(before, c.Id) {
			rt.Fatalf("deleted file %s used by a live batch", c.Id)
		}
		was, t := before.Files[c.Id], after.FileTombstones[c.Id]
		if c.KeepPosition != (t != nil && t.DeletedAt == after.Now/1000) ||
			(t != nil && (t.Project != was.Project || t.CreatedAt != was.CreatedAt)) {
			rt.Fatalf("delete of %v (keep_position %v) left tombstone %v", was, c.KeepPosition, t)
		}
	}
	// Every command that succeeds prunes the tombstones due at its time.
	for _, t := range after.FileTombstones {
		if t.DeletedAt <= after.Now/1000-int64(FileTombstoneTTL/time.Second) {
			rt.Fatalf("tombstone %v kept a day past its delete at %d", t, after.Now)
		}
	}
}

// checkReapply applies a command that just succeeded again, at the next
// index and the same time: a proposer that lost leadership may have it
// committed twice. The second apply must change no record.
func (m *model) checkReapply(rt *rapid.T, cmd proto.Message) {
	if _, ok := cmd.(*vbatchv1.RegisterAgent); ok {
		return // an upsert: registering again restamps registered_at
	}
	m.cov["reapplied"]++
	before := m.state()
	err := m.apply(rt, cmd)
	if after := m.state(); !before.Equal(after) {
		rt.Fatalf("re-applied %T (result %v) changed the state", cmd, err)
	}
}

// checkStep checks what may change between two states.
// onlyCompacted reports whether after is before compacted: the same batch
// without chunks and marked so.
func onlyCompacted(before, after *vbatchv1.Batch) bool {
	if !after.Compacted || len(after.Chunks) > 0 {
		return false
	}
	was := proto.Clone(before).(*vbatchv1.Batch)
	was.Chunks, was.Compacted = nil, true
	return proto.Equal(was, after)
}

func checkStep(rt *rapid.T, before, after *State) {
	if after.Now < before.Now {
		rt.Fatalf("time ran backwards: %d -> %d", before.Now, after.Now)
	}
	for id, old := range before.Batches {
		b, ok := after.Batches[id]
		if !ok {
			rt.Fatalf("batch %s vanished", id)
		}
		// A terminal batch never changes, but for compaction dropping its
		// internal chunk records.
		if IsTerminal(old.Status) && !proto.Equal(old, b) && !onlyCompacted(old, b) {
			rt.Fatalf("terminal batch %s changed", id)
		}
		if old.Status != b.Status && !ValidTransition(old.Status, b.Status) {
			rt.Fatalf("batch %s moved %s -> %s", id, old.Status, b.Status)
		}
		if b.Status < old.Status {
			rt.Fatalf("batch %s moved backwards %s -> %s", id, old.Status, b.Status)
		}
		for i, c := range b.Chunks {
			if i < len(old.Chunks) && c.Progress < old.Chunks[i].Progress {
				rt.Fatalf("batch %s chunk %d progress went back", id, i)
			}
		}
	}
}

// checkState checks the invariants of one state.
func (m *model) checkState(rt *rapid.T, s *State) {
	granted := map[uint64]bool{}
	for _, tok := range m.tokens {
		granted[tok] = true
	}
	for id, f := range s.Files {
		var sum int64
		for _, p := range f.Parts {
			sum += p.GetBytes()
		}
		if len(f.Parts) > 0 && sum != f.Bytes {
			rt.Fatalf("file %s of %d bytes has parts of %d", id, f.Bytes, sum)
		}
	}
	for id, b := range s.Batches {
		if b.RequestCounts == nil || b.Usage == nil {
			rt.Fatalf("batch %s without counts or usage", id)
		}
		var completed, failed int64
		next := int64(0)
		for i, c := range b.Chunks {
			if c.Index != uint32(i) || c.StartLine != next || c.EndLine <= c.StartLine {
				rt.Fatalf("batch %s chunk %d: bad range [%d,%d)", id, i, c.StartLine, c.EndLine)
			}
			next = c.EndLine
			line := c.StartLine
			for _, p := range c.Parts {
				if p.FromLine != line || p.ToLine <= p.FromLine || p.Succeeded+p.Failed != p.ToLine-p.FromLine || !granted[p.Token] {
					rt.Fatalf("batch %s chunk %d: bad part %v after line %d", id, i, p, line)
				}
				line = p.ToLine
				completed += p.Succeeded
				failed += p.Failed
			}
			if line != c.Progress || c.Progress > c.EndLine {
				rt.Fatalf("batch %s chunk %d: parts end at %d, progress %d, end %d", id, i, line, c.Progress, c.EndLine)
			}
			if (c.Crashes == 0) != (c.CrashWindowEnd == 0) || (c.Crashes > 0 && (c.CrashWindowEnd <= c.Progress || c.CrashWindowEnd > c.EndLine)) {
				rt.Fatalf("batch %s chunk %d: %d crashes over [%d,%d), end %d", id, i, c.Crashes, c.Progress, c.CrashWindowEnd, c.EndLine)
			}
			if int(c.HeadCrashes) < len(c.HeadCrashAgents) || (c.HeadCrashes > 0) != (len(c.HeadCrashAgents) > 0) {
				rt.Fatalf("batch %s chunk %d: %d head crashes by agents %v", id, i, c.HeadCrashes, c.HeadCrashAgents)
			}
			if c.HeadCrashes > 0 && c.Progress >= c.EndLine {
				rt.Fatalf("batch %s chunk %d: %d head crashes with every line committed", id, i, c.HeadCrashes)
			}
			switch c.State {
			case chunkPending:
				if c.Lease != nil {
					rt.Fatalf("batch %s chunk %d: pending with a lease", id, i)
				}
			case chunkLeased:
				if c.Lease == nil || !granted[c.Lease.Token] || IsTerminal(b.Status) {
					rt.Fatalf("batch %s (%s) chunk %d: bad lease %v", id, b.Status, i, c.Lease)
				}
				if _, ok := s.Agents[c.Lease.AgentId]; !ok {
					rt.Fatalf("batch %s chunk %d leased to unregistered %s", id, i, c.Lease.AgentId)
				}
			case chunkDone:
				if c.Progress != c.EndLine || c.Lease == nil {
					rt.Fatalf("batch %s chunk %d: done at %d of %d, lease %v", id, i, c.Progress, c.EndLine, c.Lease)
				}
			default:
				rt.Fatalf("batch %s chunk %d: state %s", id, i, c.State)
			}
			if b.Status == statusFinalizing && c.State != chunkDone {
				rt.Fatalf("finalizing batch %s has chunk %d %s", id, i, c.State)
			}
		}
		rc := b.RequestCounts
		if b.Compacted {
			// Only a batch that ended is compacted, and it keeps its counts
			// (the model's own record of them) but no chunk.
			if !IsTerminal(b.Status) || len(b.Chunks) > 0 {
				rt.Fatalf("compacted batch %s is %s with %d chunks", id, b.Status, len(b.Chunks))
			}
			if want := m.counts[id]; want != nil && !proto.Equal(rc, want) {
				rt.Fatalf("compacted batch %s counts %v, before compaction %v", id, rc, want)
			}
			m.checkResultFiles(rt, s, b)
			continue
		}
		m.counts[id] = proto.Clone(rc).(*vbatchv1.RequestCounts)
		if len(b.Chunks) > 0 && next != rc.Total {
			rt.Fatalf("batch %s: chunks cover %d of %d lines", id, next, rc.Total)
		}
		if rc.Completed != completed || rc.Failed != failed+m.extra[id] || rc.Completed+rc.Failed > rc.Total {
			rt.Fatalf("batch %s counts %v; parts say %d/%d, extra %d", id, rc, completed, failed, m.extra[id])
		}
		m.checkResultFiles(rt, s, b)
	}
	for id, f := range s.Files {
		if f.BatchId != "" && !IsTerminal(s.Batches[f.BatchId].GetStatus()) {
			rt.Fatalf("file %s of batch %s exists before the batch ended", id, f.BatchId)
		}
	}
}

func (m *model) checkResultFiles(rt *rapid.T, s *State, b *vbatchv1.Batch) {
	if !IsTerminal(b.Status) {
		if b.OutputFileId != "" || b.ErrorFileId != "" {
			rt.Fatalf("live batch %s has result files", b.Id)
		}
		return
	}
	if (b.OutputFileId != "") != (b.RequestCounts.Completed > 0) || (b.ErrorFileId != "") != (b.RequestCounts.Failed > 0) {
		rt.Fatalf("batch %s: files %q %q for counts %v", b.Id, b.OutputFileId, b.ErrorFileId, b.RequestCounts)
	}
	if f, ok := s.Files[b.OutputFileId]; ok && f.Lines != b.RequestCounts.Completed {
		rt.Fatalf("batch %s: output file of %d lines, %d completed", b.Id, f.Lines, b.RequestCounts.Completed)
	}
	if f, ok := s.Files[b.ErrorFileId]; ok && f.Lines != b.RequestCounts.Failed {
		rt.Fatalf("batch %s: error file of %d lines, %d failed", b.Id, f.Lines, b.RequestCounts.Failed)
	}
	// ReferencedBlobs keeps a finished batch's part blobs only through its
	// result files: each must be listed in the one that still exists.
	has := func(fileID string, r *vbatchv1.BlobRef) bool {
		f, ok := s.Files[fileID]
		if !ok || r.GetBytes() == 0 {
			return true // deleted by the user, or nothing to keep
		}
		parts := f.Parts
		if was, ok := m.merged[fileID]; ok {
			parts = was // merged: its one blob holds these parts' bytes
		}
		return slices.ContainsFunc(parts, func(p *vbatchv1.BlobRef) bool { return p.Sha256 == r.Sha256 })
	}
	for _, c := range b.Chunks {
		for _, p := range c.Parts {
			if !has(b.OutputFileId, p.Output) || !has(b.ErrorFileId, p.Errors) {
				rt.Fatalf("batch %s: part %v is in no result file", b.Id, p)
			}
		}
	}
}

// checkIndex compares the live-batch index the FSM's own state keeps
// (not a clone's, which has none) with the batches not ended.
func (m *model) checkIndex(rt *rapid.T) { checkIndex(rt, m.f) }

func checkIndex(rt *rapid.T, f *FSM) {
	f.View(func(s *State) {
		if s.live == nil {
			rt.Fatal("the FSM's state has no live-batch index")
		}
		indexed := map[string]bool{}
		s.LiveBatches(func(b *vbatchv1.Batch) bool {
			if s.Batches[b.Id] != b || IsTerminal(b.Status) {
				rt.Fatalf("live index holds batch %s (%s), not the state's live record", b.Id, b.Status)
			}
			indexed[b.Id] = true
			return true
		})
		for id, b := range s.Batches {
			if !IsTerminal(b.Status) && !indexed[id] {
				rt.Fatalf("live index misses batch %s (%s)", id, b.Status)
			}
		}
		// The tombstones' deletion order: oldest first, holding every
		// tombstone of the map (and perhaps ones a later delete replaced).
		if !s.tombsIndexed {
			rt.Fatal("the FSM's state has no tombstone index")
		}
		inOrder := map[*vbatchv1.FileTombstone]bool{}
		for i, t := range s.tombs {
			if i > 0 && t.DeletedAt < s.tombs[i-1].DeletedAt {
				rt.Fatalf("tombstone index out of deletion order at %d: %d after %d", i, t.DeletedAt, s.tombs[i-1].DeletedAt)
			}
			inOrder[t] = true
		}
		for id, t := range s.FileTombstones {
			if !inOrder[t] {
				rt.Fatalf("tombstone index misses file %s", id)
			}
		}
	})
}

// checkSnapshot round-trips the state through a snapshot.
func (m *model) checkSnapshot(rt *rapid.T) {
	snap, err := m.f.Snapshot()
	if err != nil {
		rt.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		rt.Fatal(err)
	}
	f := New()
	if err := f.Restore(sinkReader(sink)); err != nil {
		rt.Fatal(err)
	}
	var got *State
	f.View(func(s *State) { got = s.Clone() })
	want := m.state()
	if !got.Equal(want) || got.Now != want.Now || f.AppliedIndex() != m.index {
		rt.Fatal("snapshot round trip changed the state")
	}
	checkIndex(rt, f)
}

// checkReplay applies the whole log to a fresh FSM: Apply is
// deterministic, so every result and the final state are the same.
func (m *model) checkReplay(rt *rapid.T) {
	f := New()
	for i, l := range m.entries {
		res := f.Apply(l).(*vbatchv1.Result)
		if !proto.Equal(res, m.results[i]) {
			rt.Fatalf("replayed entry %d: %v, first time %v", l.Index, res, m.results[i])
		}
	}
	var got *State
	f.View(func(s *State) { got = s.Clone() })
	if want := m.state(); !got.Equal(want) || got.Now != want.Now {
		rt.Fatal("replay reached another state")
	}
}

func sinkReader(s *memSink) *nopReadCloser { return &nopReadCloser{bytes.NewReader(s.Bytes())} }

type nopReadCloser struct{ *bytes.Reader }

func (nopReadCloser) Close() error { return nil }

func sorted[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func (m *model) newID(prefix string) string {
	m.seq++
	return fmt.Sprintf("%s%d", prefix, m.seq)
}
