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
	// relaid is set once the reader moved to the file's current parts.
	relaid bool
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
			rc, err := m.c.blobs.Open(m.parts[0].Sha256)
			if errors.Is(err, blob.ErrNotFound) && !m.relaid {
				if rerr := m.relay(); rerr == nil {
					continue
				}
			}
			if err != nil {
				return 0, fmt.Errorf("open blob %s: %w", m.parts[0].Sha256, err)
			}
			m.cur, m.parts = rc, m.parts[1:]
		}
		n, err := m.cur.Read(p)
		m.off += int64(n)
		if errors.Is(err, io.EOF) {
			_ = m.cur.Close()
			m.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
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
