package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/coordinator/blob"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// OpenFile returns the content of a file: its parts in order, each fetched
// from a peer if missing here and verified as it is read. Every part is
// held (its grace restarted) before reading begins, so the blob GC leaves
// them for at least the grace even if the leader merges the file's parts
// meanwhile; a read that still finds a part gone goes on from the same
// offset in the file's current parts.
func (c *Coordinator) OpenFile(ctx context.Context, f *vbatchv1.File) (io.ReadCloser, error) {
	err := c.holdParts(ctx, f)
	if err != nil && errors.Is(err, blob.ErrNotFound) {
		// Merged since f was read: the current parts hold the same bytes.
		if cur := c.file(f.Id); cur != nil && !sameParts(cur.Parts, f.Parts) {
			f, err = cur, c.holdParts(ctx, cur)
		}
	}
	if err != nil {
		return nil, err
	}
	return &multiBlobReader{c: c, ctx: ctx, fileID: f.Id, parts: f.Parts}, nil
}

// holdParts makes sure every part of f is here, fetched from a peer if
// need be, and restarts each one's GC grace.
func (c *Coordinator) holdParts(ctx context.Context, f *vbatchv1.File) error {
	for _, p := range f.GetParts() {
		if _, ok := c.blobs.Hold(p.Sha256); ok {
			continue // here, and its grace restarted
		}
		if err := c.repl.Ensure(ctx, p.Sha256); err != nil {
			if errors.Is(err, blob.ErrNoSpace) {
				// This node cannot hold the copy it lacks; another can serve.
				return fmt.Errorf("file %s: blob %s: %w (%w)", f.Id, p.Sha256, api.ErrUnavailable, err)
			}
			return fmt.Errorf("file %s: blob %s: %w", f.Id, p.Sha256, err)
		}
		if _, ok := c.blobs.Hold(p.Sha256); !ok {
			return fmt.Errorf("file %s: blob %s: %w", f.Id, p.Sha256, blob.ErrNotFound)
		}
	}
	return nil
}

// sameParts reports whether two part lists are equal.
func sameParts(a, b []*vbatchv1.BlobRef) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// multiBlobReader reads a file's parts in order, opening each when reached
// so only one blob is open at a time.
type multiBlobReader struct {
	c      *Coordinator
	ctx    context.Context
	fileID string
	parts  []*vbatchv1.BlobRef // not opened yet
	cur    io.ReadCloser
	off    int64 // file bytes returned so far
	// curSha is the blob cur reads, curPos the offset in it of cur's next
	// byte and curEnd where cur stops, so a copy found corrupt part way
	// can be fetched again and read on from the same byte.
	curSha         string
	curPos, curEnd int64
	// relaid is set once the reader moved to the file's current parts.
	relaid bool
	// refetched holds the blobs whose local copy was found corrupt and
	// fetched again from a peer during this read (once each).
	refetched map[string]bool
}

func (m *multiBlobReader) Read(p []byte) (int, error) {
	if err := m.ctx.Err(); err != nil {
		return 0, err // a merge whose leadership ended, a client gone
	}
	for {
		if m.cur == nil {
			if len(m.parts) == 0 {
				return 0, io.EOF
			}
			next := m.parts[0]
			rc, err := m.c.blobs.Open(next.Sha256)
			if errors.Is(err, blob.ErrNotFound) && !m.relaid {
				if rerr := m.relay(); rerr == nil {
					continue
				}
			}
			if errors.Is(err, blob.ErrCorrupt) {
				// Quarantined by the open: read a good copy from a peer.
				rc, err = m.refetch(next.Sha256, 0, next.Bytes, err)
			}
			if err != nil {
				return 0, fmt.Errorf("open blob %s: %w", next.Sha256, err)
			}
			m.cur, m.parts = rc, m.parts[1:]
			m.curSha, m.curPos, m.curEnd = next.Sha256, 0, next.Bytes
		}
		n, err := m.cur.Read(p)
		m.off += int64(n)
		m.curPos += int64(n)
		if errors.Is(err, io.EOF) {
			_ = m.cur.Close()
			m.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		if errors.Is(err, blob.ErrCorrupt) {
			// Every byte returned so far was verified; the copy is in
			// quarantine now. Go on from the same byte of a good copy.
			_ = m.cur.Close()
			m.cur = nil
			rc, rerr := m.refetch(m.curSha, m.curPos, m.curEnd, err)
			if rerr != nil {
				return n, rerr
			}
			m.cur = rc
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// refetch fetches a good copy of sha from a peer after this node's copy
// failed verification (cause), and opens it from pos to end. A blob is
// fetched once per read: a second failure is returned.
func (m *multiBlobReader) refetch(sha string, pos, end int64, cause error) (io.ReadCloser, error) {
	if m.refetched[sha] {
		return nil, fmt.Errorf("file %s: blob %s: %w", m.fileID, sha, cause)
	}
	if m.refetched == nil {
		m.refetched = map[string]bool{}
	}
	m.refetched[sha] = true
	m.c.log.Warn("stored copy corrupt while serving a file; reading a good copy from a peer",
		"file_id", m.fileID, "sha", sha, "offset", pos, "err", cause)
	if err := m.c.repl.Ensure(m.ctx, sha); err != nil {
		return nil, fmt.Errorf("file %s: blob %s corrupt here, and no peer copy: %w", m.fileID, sha, err)
	}
	rc, err := m.c.blobs.OpenRange(sha, pos, end-pos)
	if err != nil {
		return nil, fmt.Errorf("file %s: blob %s from %d: %w", m.fileID, sha, pos, err)
	}
	m.curSha, m.curPos, m.curEnd = sha, pos, end
	return rc, nil
}

// relay goes on from the same file offset in the file's current parts: a
// part the reader had not opened yet was deleted because the parts were
// merged into one blob (docs/architecture.md, Blob store).
func (m *multiBlobReader) relay() error {
	cur := m.c.file(m.fileID)
	if cur == nil {
		return fmt.Errorf("file %s: deleted while being read", m.fileID)
	}
	m.relaid = true
	var start int64
	for i, p := range cur.Parts {
		if m.off < start+p.Bytes {
			if err := m.c.repl.Ensure(m.ctx, p.Sha256); err != nil {
				return fmt.Errorf("file %s: blob %s: %w", m.fileID, p.Sha256, err)
			}
			rc, err := m.c.blobs.OpenRange(p.Sha256, m.off-start, p.Bytes-(m.off-start))
			if err != nil {
				return fmt.Errorf("file %s: blob %s from %d: %w", m.fileID, p.Sha256, m.off-start, err)
			}
			m.cur, m.parts = rc, cur.Parts[i+1:]
			m.curSha, m.curPos, m.curEnd = p.Sha256, m.off-start, p.Bytes
			return nil
		}
		start += p.Bytes
	}
	m.parts = nil // every byte was read already
	return nil
}

func (m *multiBlobReader) Close() error {
	if m.cur != nil {
		return m.cur.Close()
	}
	return nil
}
