package validate

import (
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// FileCheck records what a validation found in a file that is a valid batch
// input, so that a batch on the file can start without reading it again
// (see FromCheck). It returns nil when res lists errors. res must come from
// Validate under opts.
func FileCheck(res *Result, opts Options) *vbatchv1.FileCheck {
	if res == nil || len(res.Errors) > 0 || res.Endpoint == "" {
		return nil
	}
	opts = opts.WithDefaults()
	fc := &vbatchv1.FileCheck{
		Endpoint:     res.Endpoint,
		Model:        res.Model,
		Total:        res.Total,
		MaxRequests:  int64(opts.MaxRequests),
		ChunkSize:    int64(opts.ChunkSize),
		MaxLineBytes: int64(opts.MaxLineBytes),
		MaxTokens:    opts.MaxTokens,
		MaxN:         opts.MaxN,
	}
	for _, c := range res.Chunks {
		fc.ChunkOffsets = append(fc.ChunkOffsets, c.StartOffset)
	}
	if n := len(res.Chunks); n > 0 {
		fc.ChunkOffsets = append(fc.ChunkOffsets, res.Chunks[n-1].EndOffset)
	}
	return fc
}

// FromCheck returns the Result that Validate would give for a batch with
// the given endpoint on the file fc describes, when fc was recorded under
// the same options and for the same endpoint; ok is false otherwise, and
// the file must be validated by reading it.
func FromCheck(fc *vbatchv1.FileCheck, endpoint string, opts Options) (res *Result, ok bool) {
	opts = opts.WithDefaults()
	switch {
	case fc == nil, fc.GetEndpoint() != endpoint, fc.GetModel() == "",
		fc.GetMaxRequests() != int64(opts.MaxRequests), fc.GetChunkSize() != int64(opts.ChunkSize),
		fc.GetMaxLineBytes() != int64(opts.MaxLineBytes), fc.GetMaxTokens() != opts.MaxTokens, fc.GetMaxN() != opts.MaxN,
		fc.GetTotal() <= 0, fc.GetTotal() > int64(opts.MaxRequests):
		return nil, false
	}
	size := fc.ChunkSize
	n := (fc.Total + size - 1) / size
	if int64(len(fc.ChunkOffsets)) != n+1 {
		return nil, false
	}
	res = &Result{Model: fc.Model, Total: fc.Total, Endpoint: fc.Endpoint}
	for k := int64(0); k < n; k++ {
		c := Chunk{
			StartLine: k * size, EndLine: min((k+1)*size, fc.Total),
			StartOffset: fc.ChunkOffsets[k], EndOffset: fc.ChunkOffsets[k+1],
		}
		if c.StartOffset < 0 || c.EndOffset <= c.StartOffset {
			return nil, false
		}
		res.Chunks = append(res.Chunks, c)
	}
	return res, true
}
