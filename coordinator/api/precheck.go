package api

import (
	"errors"

	"github.com/vbatch/vbatch/coordinator/validate"
	"github.com/vbatch/vbatch/internal/bufpipe"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// precheckBuffer is how far validation may fall behind the upload before
// the upload waits for it.
const precheckBuffer = 4 << 20

// errUploadEnded stops a precheck whose upload ended without a file.
var errUploadEnded = errors.New("upload ended")

// precheck validates an upload as batch input while it streams in, on the
// other core, so that a batch on the file starts without reading the file
// again. A file that turns out not to be valid batch input (or not to be
// batch input at all) just keeps no check; batches on it are validated in
// full and report their errors then.
type precheck struct {
	opts  validate.Options
	pipe  *bufpipe.Pipe
	done  chan struct{}
	res   *validate.Result
	err   error
	ended bool
}

func startPrecheck(opts validate.Options) *precheck {
	p := &precheck{opts: opts, pipe: bufpipe.New(precheckBuffer), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.res, p.err = validate.Validate(p.pipe, "", opts)
		// Validation may stop early (at its error limit): drop the rest.
		p.pipe.Close()
	}()
	return p
}

// Write feeds the upload's bytes to the validator; it never fails.
func (p *precheck) Write(b []byte) (int, error) { return p.pipe.Write(b) }

// finish ends the stream and waits for the validator; uploadErr non-nil
// means the upload failed and nothing is kept. It returns the check to
// store with the file, nil unless the whole file validated clean. Calls
// after the first return nil.
func (p *precheck) finish(uploadErr error) *vbatchv1.FileCheck {
	if p == nil || p.ended {
		return nil
	}
	p.ended = true
	p.pipe.CloseWithError(uploadErr)
	<-p.done
	if uploadErr != nil || p.err != nil {
		return nil
	}
	return validate.FileCheck(p.res, p.opts)
}
