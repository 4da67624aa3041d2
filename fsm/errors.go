package fsm

import (
	"errors"
	"fmt"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// Sentinel errors a command can be rejected with. A rejection is a normal
// result of Apply, returned to the proposer; it never changes state.
var (
	// ErrNotFound: the command names an object that does not exist (or
	// belongs to another project).
	ErrNotFound = errors.New("not found")
	// ErrExists: the command creates an object whose id is taken.
	ErrExists = errors.New("already exists")
	// ErrConflict: the object is in a state that does not allow the command
	// (a batch already terminal, a file a live batch uses, a chunk leased).
	ErrConflict = errors.New("conflict")
	// ErrStaleToken: a lease command carries a fencing token that is no
	// longer the chunk's live lease.
	ErrStaleToken = errors.New("stale fencing token")
	// ErrInvalid: the command is malformed (missing fields, bad ranges).
	ErrInvalid = errors.New("invalid command")
)

var codes = map[error]string{
	ErrNotFound:   "not_found",
	ErrExists:     "exists",
	ErrConflict:   "conflict",
	ErrStaleToken: "stale_token",
	ErrInvalid:    "invalid",
}

// Reject builds the error a command is refused with: one of the sentinels,
// with a message for humans.
func Reject(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

// ToResult turns an Apply outcome into the wire Result proposers receive.
func ToResult(index uint64, err error) *vbatchv1.Result {
	r := &vbatchv1.Result{Index: index}
	if err == nil {
		return r
	}
	r.Code = "internal"
	for kind, code := range codes {
		if errors.Is(err, kind) {
			r.Code = code
			break
		}
	}
	r.Message = err.Error()
	return r
}

// FromResult turns a wire Result back into an error that matches the same
// sentinel with errors.Is; nil on success.
func FromResult(r *vbatchv1.Result) error {
	if r == nil || r.Code == "" {
		return nil
	}
	for kind, code := range codes {
		if code == r.Code {
			return &resultError{kind: kind, msg: r.Message}
		}
	}
	return errors.New(r.Message)
}

type resultError struct {
	kind error
	msg  string
}

func (e *resultError) Error() string { return e.msg }
func (e *resultError) Unwrap() error { return e.kind }
