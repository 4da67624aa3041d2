package fsm

import (
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// mergeFileParts swaps a file's parts for one blob holding the same bytes.
// The file must still have exactly the parts the leader merged (files do
// not change, but a re-applied or raced command must not swap twice), and
// the merged blob must be as long as the file. The file's bytes, sha256,
// lines and every other field stay: readers see the same content.
func (a *applyCtx) mergeFileParts(c *vbatchv1.MergeFileParts) error {
	f, ok := a.s.Files[c.FileId]
	if !ok {
		return Reject(ErrNotFound, "file %s", c.FileId)
	}
	m := c.GetMerged()
	if m.GetSha256() == "" {
		return Reject(ErrInvalid, "file %s: merge without a merged blob", c.FileId)
	}
	if len(f.Parts) == 1 && proto.Equal(f.Parts[0], m) {
		return nil // this very merge, applied again
	}
	if len(c.Parts) < 2 || len(f.Parts) != len(c.Parts) {
		return Reject(ErrConflict, "file %s has %d parts, the merge replaces %d", c.FileId, len(f.Parts), len(c.Parts))
	}
	var total int64
	for i, p := range f.Parts {
		if !proto.Equal(p, c.Parts[i]) {
			return Reject(ErrConflict, "file %s: part %d is %s, the merge replaces %s", c.FileId, i, p.GetSha256(), c.Parts[i].GetSha256())
		}
		total += p.GetBytes()
	}
	if m.Bytes != total || m.Bytes != f.Bytes {
		return Reject(ErrInvalid, "file %s: merged blob of %d bytes for parts of %d (file %d)", c.FileId, m.Bytes, total, f.Bytes)
	}
	// A new record, not a change to the stored one: readers may hold it
	// past View (State.Files).
	merged := proto.Clone(f).(*vbatchv1.File)
	merged.Parts = []*vbatchv1.BlobRef{proto.Clone(m).(*vbatchv1.BlobRef)}
	a.s.Files[f.Id] = merged
	return nil
}
