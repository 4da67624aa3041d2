package fsm

import (
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// The generator draws from a PRNG that rapid seeds once per step: rapid's
// own integer draws lean hard towards small values, which would make every
// "now and then" branch common. Rapid still shrinks the number of steps
// and each step's seed, and a failing run logs its commands.

// gen draws commands against a state.
type gen struct {
	r *rand.Rand
	m *model
}

// oneIn reports true with probability 1/n.
func (g *gen) oneIn(n int) bool { return g.r.IntN(n) == 0 }

// between draws an int in [lo, hi].
func (g *gen) between(lo, hi int) int { return lo + g.r.IntN(hi-lo+1) }

func sample[E any](g *gen, xs []E) E { return xs[g.r.IntN(len(xs))] }

// pick draws one of ids, or other when ids is empty and now and then.
func (g *gen) pick(ids []string, other string) string {
	if len(ids) == 0 || g.oneIn(10) {
		return other
	}
	return sample(g, ids)
}

// command picks a command against state s.
func (g *gen) command(s *State) proto.Message {
	// Weights favour the commands that move batches forward, so that runs
	// reach the end of the lifecycle and not only its refusals; with a few
	// batches running, new ones are rare.
	create := 3
	if len(batchesIn(s, statusValidating, statusInProgress, statusFinalizing, statusCancelling)) >= 3 {
		create = 0
	}
	kinds := []struct {
		weight int
		draw   func(*State) proto.Message
	}{
		{1, g.createFile}, {create, g.createFile}, {2, g.deleteFile}, {1, g.createBatch}, {create, g.createBatch}, {4, g.startBatch},
		{1, g.failBatch}, {1, g.cancelBatch}, {1, g.agentCommand}, {8, g.grant},
		{3, g.renew}, {16, g.commit}, {6, g.complete}, {6, g.completePart}, {3, g.releaseOrExpire},
		{1, g.extend}, {3, g.finalize}, {4, g.finish}, {1, g.compact}, {2, g.merge}, {1, g.incarnation},
	}
	total := 0
	for _, k := range kinds {
		total += k.weight
	}
	n := g.r.IntN(total)
	for _, k := range kinds {
		if n < k.weight {
			return k.draw(s)
		}
		n -= k.weight
	}
	panic("unreachable")
}

// duration mostly moves time by seconds (leases run out), rarely by
// hours (batches expire, deleted files' tombstones are pruned).
func (g *gen) duration() time.Duration {
	if g.oneIn(40) {
		return time.Duration(g.between(1, 48)) * time.Hour
	}
	return time.Duration(g.between(0, 10_000)) * time.Millisecond
}

// batchesIn lists the batches of s in one of the statuses.
func batchesIn(s *State, statuses ...vbatchv1.BatchStatus) []string {
	var ids []string
	for _, id := range sorted(s.Batches) {
		for _, st := range statuses {
			if s.Batches[id].Status == st {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// anyBatch is a batch id, or one that does not exist.
func (g *gen) anyBatch(s *State) string { return g.pick(sorted(s.Batches), "batch_none") }

// chunk draws a chunk of a running batch: mostly one that satisfies
// want, else any chunk of any batch, or one that does not exist.
func (g *gen) chunk(s *State, want func(*vbatchv1.Chunk) bool) (string, uint32, *vbatchv1.Chunk) {
	type ref struct {
		batch string
		chunk *vbatchv1.Chunk
	}
	var wanted, all []ref
	for _, id := range sorted(s.Batches) {
		for _, c := range s.Batches[id].Chunks {
			all = append(all, ref{id, c})
			if want(c) && (s.Batches[id].Status == statusInProgress || s.Batches[id].Status == statusCancelling) {
				wanted = append(wanted, ref{id, c})
			}
		}
	}
	switch {
	case len(wanted) > 0 && !g.oneIn(10):
		r := sample(g, wanted)
		return r.batch, r.chunk.Index, r.chunk
	case len(all) > 0 && !g.oneIn(10):
		r := sample(g, all)
		return r.batch, r.chunk.Index, r.chunk
	}
	return g.anyBatch(s), uint32(g.between(0, 50)), &vbatchv1.Chunk{}
}

func isPending(c *vbatchv1.Chunk) bool { return c.State == chunkPending }
func isLeased(c *vbatchv1.Chunk) bool  { return c.State == chunkLeased }
func isFullyCommitted(c *vbatchv1.Chunk) bool {
	return c.State == chunkLeased && c.Progress == c.EndLine
}

// token mostly returns the chunk's lease token, else a stale or an
// unknown one.
func (g *gen) token(c *vbatchv1.Chunk) uint64 {
	switch n := g.r.IntN(10); {
	case n < 8 && c.Lease != nil:
		return c.Lease.Token
	case n < 9 && len(g.m.tokens) > 0:
		return sample(g, g.m.tokens)
	}
	return g.m.index + 1000
}

func (g *gen) createFile(s *State) proto.Message {
	id := g.m.newID("file-")
	if len(s.Files) > 0 && g.oneIn(10) {
		id = sample(g, sorted(s.Files))
	}
	lines := int64(g.between(1, 40))
	if g.oneIn(20) {
		lines = 0
	}
	c := &vbatchv1.CreateFile{File: &vbatchv1.File{
		Id: id, Project: sample(g, projects), Purpose: "batch",
		Lines: lines, Bytes: lines * 10, Parts: []*vbatchv1.BlobRef{{Sha256: "in-" + id, Bytes: lines * 10}},
	}}
	if g.oneIn(3) {
		// As at level 10: a lifetime from the FSM's created_at, with an
		// expires_at from a clock far off (the FSM must ignore it).
		c.ExpiresAfterSeconds = int64(g.between(-1, 7200))
		c.File.ExpiresAt = g.m.now.Add(time.Duration(g.between(-3600, 3600)) * time.Second).Unix()
	}
	return c
}

func (g *gen) deleteFile(s *State) proto.Message {
	id := g.pick(sorted(s.Files), "file-none")
	project := ""
	if f, ok := s.Files[id]; ok && g.oneIn(2) {
		project = f.Project
	} else if g.oneIn(2) {
		project = sample(g, projects)
	}
	// Half as at level 9, keeping the file's list position.
	return &vbatchv1.DeleteFile{Id: id, Project: project, KeepPosition: g.oneIn(2)}
}

func (g *gen) createBatch(s *State) proto.Message {
	var inputs []string
	for _, id := range sorted(s.Files) {
		if s.Files[id].BatchId == "" {
			inputs = append(inputs, id)
		}
	}
	in := g.pick(inputs, "file-none")
	project := sample(g, projects)
	if f, ok := s.Files[in]; ok && !g.oneIn(10) {
		project = f.Project
	}
	id := g.m.newID("batch_")
	if len(s.Batches) > 0 && g.oneIn(10) {
		id = sample(g, sorted(s.Batches))
	}
	window := time.Duration(g.between(1, 48)) * time.Hour
	c := &vbatchv1.CreateBatch{Batch: &vbatchv1.Batch{
		Id: id, Project: project, InputFileId: in, Endpoint: "/v1/chat/completions",
		ExpiresAt: g.m.now.Add(window).Unix(),
	}}
	if g.oneIn(2) {
		// As at level 10: the window from the FSM's created_at, with an
		// expires_at from a clock far off (the FSM must ignore it).
		c.WindowSeconds = int64(window / time.Second)
		if g.oneIn(20) {
			c.WindowSeconds = -1
		}
		c.Batch.ExpiresAt += int64(g.between(-3600, 3600))
	}
	return c
}

func (g *gen) startBatch(s *State) proto.Message {
	id := g.pick(batchesIn(s, statusValidating), g.anyBatch(s))
	total := int64(g.between(0, 40))
	if b, ok := s.Batches[id]; ok && s.Files[b.InputFileId] != nil {
		total = s.Files[b.InputFileId].Lines
	}
	var chunks []*vbatchv1.Chunk
	for start := int64(0); start < total; {
		end := min(total, start+int64(g.between(1, 12)))
		chunks = append(chunks, &vbatchv1.Chunk{Index: uint32(len(chunks)), StartLine: start, EndLine: end})
		start = end
	}
	if len(chunks) > 0 && g.oneIn(10) {
		chunks[len(chunks)-1].EndLine++ // past the total
	}
	return &vbatchv1.StartBatch{BatchId: id, Model: "m", Total: total, Chunks: chunks}
}

func (g *gen) failBatch(s *State) proto.Message {
	id := g.pick(batchesIn(s, statusValidating, statusFailed), g.anyBatch(s))
	return &vbatchv1.FailBatch{BatchId: id, Errors: []*vbatchv1.BatchError{{Code: "invalid_json_line", Message: "bad", Line: 1}}}
}

func (g *gen) cancelBatch(s *State) proto.Message {
	project := ""
	if g.oneIn(2) {
		project = sample(g, projects)
	}
	return &vbatchv1.CancelBatch{BatchId: g.anyBatch(s), Project: project}
}

func (g *gen) agentCommand(*State) proto.Message {
	id := sample(g, append(agentIDs, "ghost"))
	switch g.r.IntN(6) {
	case 0:
		return &vbatchv1.DrainAgent{AgentId: id}
	case 1:
		return &vbatchv1.RemoveAgent{AgentId: id}
	case 2:
		// Half of them for an unknown agent: refusals are rare otherwise.
		if g.oneIn(2) {
			id = "ghost"
		}
		return &vbatchv1.UndrainAgent{AgentId: id}
	}
	return &vbatchv1.RegisterAgent{Agent: &vbatchv1.Agent{Id: id, Models: []string{"m"}, MaxLeases: 2}}
}

// incarnation records, replaces or forgets a coordinator's incarnation, and
// now and then sends one without a node id (refused).
func (g *gen) incarnation(*State) proto.Message {
	id := sample(g, []string{"c1", "c2", "c3"})
	if g.oneIn(8) {
		id = ""
	}
	inc := sample(g, []string{"", "i1", "i2"})
	return &vbatchv1.SetServerIncarnation{NodeId: id, Incarnation: inc}
}

// ttl is mostly a lease time that outlives a few steps, now and then one
// that runs out at once (or is already over).
func (g *gen) ttl() time.Duration {
	if g.oneIn(10) {
		return time.Duration(g.between(-1000, 2000)) * time.Millisecond
	}
	return time.Duration(g.between(20, 60)) * time.Second
}

func (g *gen) grant(s *State) proto.Message {
	id, chunk, _ := g.chunk(s, isPending)
	ttl := g.ttl()
	// Attempts repeat now and then: two live leases may share one.
	c := &vbatchv1.GrantLease{BatchId: id, Chunk: chunk, AgentId: g.pick(agentIDs, "ghost"), ExpiresAt: g.m.now.Add(ttl).UnixMilli(),
		RequestId: g.pick([]string{"att-1", "att-2", "att-3"}, ""), WithinWindow: g.oneIn(2)}
	c.ExpiresAt, c.TtlMs = g.leaseEnd(ttl)
	return c
}

// leaseEnd gives a lease command's expires_at and ttl_ms: half the time an
// absolute time, else a TTL with an expires_at from a clock far off (the
// FSM must ignore it).
func (g *gen) leaseEnd(ttl time.Duration) (int64, int64) {
	if g.oneIn(2) {
		return g.m.now.Add(ttl).UnixMilli(), 0
	}
	skew := time.Duration(g.between(-3600, 3600)) * time.Second
	return g.m.now.Add(ttl + skew).UnixMilli(), ttl.Milliseconds()
}

func (g *gen) renew(s *State) proto.Message {
	id, chunk, c := g.chunk(s, isLeased)
	ttl := g.ttl()
	r := &vbatchv1.RenewLease{BatchId: id, Chunk: chunk, Token: g.token(c)}
	r.ExpiresAt, r.TtlMs = g.leaseEnd(ttl)
	return r
}

func (g *gen) commit(s *State) proto.Message {
	id, chunk, c := g.chunk(s, isLeased)
	if len(c.Parts) > 0 && g.oneIn(10) {
		// A part the agent already got committed, sent again.
		return &vbatchv1.CommitPart{BatchId: id, Chunk: chunk, Part: c.Parts[len(c.Parts)-1]}
	}
	from := c.Progress
	if g.oneIn(10) {
		from += int64(g.between(-2, 2))
	}
	to := from + int64(g.between(1, 8))
	if g.oneIn(2) || (to > c.EndLine && !g.oneIn(10)) {
		to = max(c.EndLine, from+1)
	}
	ok := int64(g.between(0, int(to-from)))
	failed := to - from - ok
	if g.oneIn(20) {
		failed++
	}
	return &vbatchv1.CommitPart{BatchId: id, Chunk: chunk, Part: &vbatchv1.Part{
		FromLine: from, ToLine: to, Token: g.token(c), Succeeded: ok, Failed: failed,
		Output: &vbatchv1.BlobRef{Sha256: g.m.newID("out-"), Bytes: ok * 10},
		Errors: &vbatchv1.BlobRef{Sha256: g.m.newID("err-"), Bytes: failed * 10},
	}, Usage: &vbatchv1.Usage{InputTokens: ok, OutputTokens: 2 * ok, TotalTokens: 3 * ok}}
}

// completePart is commit wrapped as CompletePart: mostly on a part that
// ends the chunk, as agents send it; now and then on one that does not.
func (g *gen) completePart(s *State) proto.Message {
	// A clone: commit may hand back a part that lives in the state.
	cmd := proto.Clone(g.commit(s)).(*vbatchv1.CommitPart)
	if b := s.Batches[cmd.BatchId]; b != nil && int(cmd.Chunk) < len(b.Chunks) && !g.oneIn(10) {
		if end := b.Chunks[cmd.Chunk].EndLine; cmd.Part.FromLine < end {
			cmd.Part.ToLine = end
			cmd.Part.Succeeded, cmd.Part.Failed = end-cmd.Part.FromLine, 0
		}
	}
	return &vbatchv1.CompletePart{Commit: cmd}
}

func (g *gen) complete(s *State) proto.Message {
	id, chunk, c := g.chunk(s, isFullyCommitted)
	return &vbatchv1.CompleteChunk{BatchId: id, Chunk: chunk, Token: g.token(c)}
}

func (g *gen) releaseOrExpire(s *State) proto.Message {
	if g.oneIn(2) {
		// What the leader sends: every lease whose time ran out.
		cmd := &vbatchv1.ExpireLeases{Reason: "lease expired"}
		for _, id := range sorted(s.Batches) {
			for _, c := range s.Batches[id].Chunks {
				if c.State == chunkLeased && c.Lease.ExpiresAt <= g.m.now.UnixMilli() {
					cmd.Leases = append(cmd.Leases, &vbatchv1.LeaseRef{BatchId: id, Chunk: c.Index, Token: c.Lease.Token})
				}
			}
		}
		return cmd
	}
	id, chunk, c := g.chunk(s, isLeased)
	if g.oneIn(2) {
		cmd := &vbatchv1.ReleaseLease{BatchId: id, Chunk: chunk, Token: g.token(c), Reason: "drain"}
		if g.oneIn(2) {
			// The engine died under the lease: it had started some lines
			// past progress, or ran the head line alone.
			cmd.Reason = ReleaseEngineCrash
			cmd.Alone = g.oneIn(3)
			cmd.StartedEnd = c.Progress + int64(g.r.IntN(int(c.EndLine-c.Progress)+2))
		}
		return cmd
	}
	refs := []*vbatchv1.LeaseRef{{BatchId: id, Chunk: chunk, Token: g.token(c)}}
	if g.oneIn(2) {
		id2, chunk2, c2 := g.chunk(s, isLeased)
		refs = append(refs, &vbatchv1.LeaseRef{BatchId: id2, Chunk: chunk2, Token: g.token(c2)})
	}
	return &vbatchv1.ExpireLeases{Leases: refs, Reason: "lease expired"}
}

func (g *gen) extend(*State) proto.Message {
	ttl := g.ttl()
	cmd := &vbatchv1.ExtendLeases{ExpiresAt: g.m.now.Add(ttl).UnixMilli()}
	if g.oneIn(2) {
		cmd.GoneBefore = g.m.now.Add(-time.Duration(g.between(0, 40)) * time.Second).UnixMilli()
	}
	return cmd
}

func (g *gen) finalize(s *State) proto.Message {
	return &vbatchv1.BeginFinalize{BatchId: g.pick(batchesIn(s, statusInProgress), g.anyBatch(s))}
}

// finish draws what the leader would send: completed for a finalizing
// batch, cancelled for a cancelling one, expired with the unrun lines as
// extra errors; and now and then the wrong ending or a stale progress.
// compact mostly targets a batch that ended, now and then any batch.
func (g *gen) compact(s *State) proto.Message {
	id := g.pick(batchesIn(s, statusCompleted, statusCancelled, statusExpired, statusFailed), g.anyBatch(s))
	if g.oneIn(4) {
		id = g.anyBatch(s)
	}
	return &vbatchv1.CompactBatch{BatchId: id}
}

// merge mostly merges a file of several parts as the leader does (its
// parts, a blob of their total size), now and then with stale parts, a
// wrong size or a file of one part.
func (g *gen) merge(s *State) proto.Message {
	var multi []string
	for _, id := range sorted(s.Files) {
		if len(s.Files[id].Parts) > 1 {
			multi = append(multi, id)
		}
	}
	id := g.pick(multi, g.pick(sorted(s.Files), "file-none"))
	cmd := &vbatchv1.MergeFileParts{FileId: id, Merged: &vbatchv1.BlobRef{Sha256: g.m.newID("merged-")}}
	f, ok := s.Files[id]
	if !ok {
		return cmd
	}
	for _, p := range f.Parts {
		cmd.Parts = append(cmd.Parts, proto.Clone(p).(*vbatchv1.BlobRef))
		cmd.Merged.Bytes += p.Bytes
	}
	switch {
	case g.oneIn(10) && len(cmd.Parts) > 0:
		cmd.Parts = cmd.Parts[1:]
	case g.oneIn(10):
		cmd.Merged.Bytes++
	}
	return cmd
}

func (g *gen) finish(s *State) proto.Message {
	id := g.pick(batchesIn(s, statusFinalizing, statusCancelling, statusInProgress, statusValidating), g.anyBatch(s))
	cmd := &vbatchv1.FinishBatch{BatchId: id, OutputFileId: g.m.newID("file-out-"), ErrorFileId: g.m.newID("file-err-")}
	b, ok := s.Batches[id]
	switch {
	case !ok || g.oneIn(10):
		cmd.Status = sample(g, []vbatchv1.BatchStatus{statusCompleted, statusCancelled, statusExpired, statusFailed})
		return cmd
	case b.Status == statusFinalizing && !g.oneIn(4):
		cmd.Status = statusCompleted
		return cmd
	case b.Status == statusCancelling && !g.oneIn(4):
		cmd.Status = statusCancelled
		return cmd
	}
	cmd.Status = statusExpired
	cmd.ProgressGiven = g.oneIn(2)
	var left int64
	for _, c := range b.Chunks {
		cmd.ExpectedProgress = append(cmd.ExpectedProgress, c.Progress)
		left += c.EndLine - c.Progress
	}
	if len(cmd.ExpectedProgress) > 0 && g.oneIn(10) {
		cmd.ExpectedProgress[0]--
	}
	if left > 0 {
		cmd.ExtraErrors = &vbatchv1.BlobRef{Sha256: g.m.newID("expired-"), Bytes: left * 10}
		cmd.ExtraFailed = left
	}
	return cmd
}
