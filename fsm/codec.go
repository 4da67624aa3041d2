package fsm

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// EnvelopeVersion is the envelope encoding this build writes and reads.
const EnvelopeVersion = 1

// Level is the newest command set this build applies. Coordinators
// advertise it in gossip, and a command newer than level 1 is proposed only
// once every server in the raft configuration advertises a level that
// applies it, so a rolling upgrade never asks an older server to apply a
// command it does not know (it would stop rather than diverge).
//
//   - 1: the commands up to DrainAgent.
//   - 2: CompletePart.
//   - 3: CompactBatch.
//   - 4: ReleaseLease counts engine crashes (started_end, alone).
//   - 5: MergeFileParts.
//   - 6: GrantLease records the agent's lease attempt (request_id);
//     ExtendLeases may leave leases long expired alone (gone_before); a
//     batch's output_expires_after_seconds dates its result files.
//   - 7: FinishBatch may say its expected_progress is given even when empty
//     (progress_given); GrantLease may refuse a grant past the batch's
//     window (within_window).
//   - 8: GrantLease and RenewLease may give the lease's time to live
//     (ttl_ms), counted from the command's time; UndrainAgent.
//   - 9: DeleteFile may keep the deleted file's list position
//     (keep_position) as a FileTombstone, pruned a day later.
//   - 10: CreateBatch may give the batch's completion window
//     (window_seconds) and CreateFile the file's lifetime
//     (expires_after_seconds), counted from the created_at the FSM gives
//     (the command's time).
//   - 11: SetServerIncarnation.
const Level = 11

// LevelCompletePart is the level that applies CompletePart.
const LevelCompletePart = 2

// LevelCompactBatch is the level that applies CompactBatch.
const LevelCompactBatch = 3

// LevelCrashCounts is the level whose ReleaseLease counts engine crashes
// on the chunk; below it the crash fields must be left unset.
const LevelCrashCounts = 4

// LevelMergeFileParts is the level that applies MergeFileParts. (Builds
// at level 4 shipped without it: reusing 4 would have them stop on it.)
const LevelMergeFileParts = 5

// LevelLeaseRequestID is the level whose GrantLease records the agent's
// lease attempt in the lease and whose ExtendLeases honours gone_before;
// below it both fields must be left unset.
const LevelLeaseRequestID = 6

// LevelOutputExpiry is the level that dates a batch's result files by its
// output_expires_after_seconds; below it the field must be left unset.
const LevelOutputExpiry = 6

// LevelExpiryChecks is the level that honours FinishBatch.progress_given
// and GrantLease.within_window; below it both must be left unset.
const LevelExpiryChecks = 7

// LevelLeaseTTL is the level whose GrantLease and RenewLease honour ttl_ms
// and that applies UndrainAgent; below it ttl_ms must be left unset and
// UndrainAgent never proposed.
const LevelLeaseTTL = 8

// LevelFileTombstones is the level whose DeleteFile honours keep_position;
// below it the field must be left unset.
const LevelFileTombstones = 9

// LevelCreateTimes is the level whose CreateBatch honours window_seconds
// and whose CreateFile honours expires_after_seconds, so that a new
// batch's or file's created_at and expires_at are both on the FSM's (the
// leader's) time; below it both fields must be left unset.
const LevelCreateTimes = 10

// LevelServerIncarnations is the level that applies SetServerIncarnation.
const LevelServerIncarnations = 11

// commandTypes maps every command type to a constructor of its message.
// The list only grows; see CommandType in state.proto.
var commandTypes = map[vbatchv1.CommandType]func() proto.Message{
	vbatchv1.CommandType_COMMAND_TYPE_CREATE_API_KEY:   func() proto.Message { return &vbatchv1.CreateAPIKey{} },
	vbatchv1.CommandType_COMMAND_TYPE_REVOKE_API_KEY:   func() proto.Message { return &vbatchv1.RevokeAPIKey{} },
	vbatchv1.CommandType_COMMAND_TYPE_CREATE_FILE:      func() proto.Message { return &vbatchv1.CreateFile{} },
	vbatchv1.CommandType_COMMAND_TYPE_DELETE_FILE:      func() proto.Message { return &vbatchv1.DeleteFile{} },
	vbatchv1.CommandType_COMMAND_TYPE_CREATE_BATCH:     func() proto.Message { return &vbatchv1.CreateBatch{} },
	vbatchv1.CommandType_COMMAND_TYPE_FAIL_BATCH:       func() proto.Message { return &vbatchv1.FailBatch{} },
	vbatchv1.CommandType_COMMAND_TYPE_START_BATCH:      func() proto.Message { return &vbatchv1.StartBatch{} },
	vbatchv1.CommandType_COMMAND_TYPE_CANCEL_BATCH:     func() proto.Message { return &vbatchv1.CancelBatch{} },
	vbatchv1.CommandType_COMMAND_TYPE_REGISTER_AGENT:   func() proto.Message { return &vbatchv1.RegisterAgent{} },
	vbatchv1.CommandType_COMMAND_TYPE_GRANT_LEASE:      func() proto.Message { return &vbatchv1.GrantLease{} },
	vbatchv1.CommandType_COMMAND_TYPE_RENEW_LEASE:      func() proto.Message { return &vbatchv1.RenewLease{} },
	vbatchv1.CommandType_COMMAND_TYPE_COMMIT_PART:      func() proto.Message { return &vbatchv1.CommitPart{} },
	vbatchv1.CommandType_COMMAND_TYPE_COMPLETE_CHUNK:   func() proto.Message { return &vbatchv1.CompleteChunk{} },
	vbatchv1.CommandType_COMMAND_TYPE_COMPLETE_PART:    func() proto.Message { return &vbatchv1.CompletePart{} },
	vbatchv1.CommandType_COMMAND_TYPE_COMPACT_BATCH:    func() proto.Message { return &vbatchv1.CompactBatch{} },
	vbatchv1.CommandType_COMMAND_TYPE_MERGE_FILE_PARTS: func() proto.Message { return &vbatchv1.MergeFileParts{} },
	vbatchv1.CommandType_COMMAND_TYPE_UNDRAIN_AGENT:    func() proto.Message { return &vbatchv1.UndrainAgent{} },
	vbatchv1.CommandType_COMMAND_TYPE_RELEASE_LEASE:    func() proto.Message { return &vbatchv1.ReleaseLease{} },
	vbatchv1.CommandType_COMMAND_TYPE_EXPIRE_LEASES:    func() proto.Message { return &vbatchv1.ExpireLeases{} },
	vbatchv1.CommandType_COMMAND_TYPE_BEGIN_FINALIZE:   func() proto.Message { return &vbatchv1.BeginFinalize{} },
	vbatchv1.CommandType_COMMAND_TYPE_FINISH_BATCH:     func() proto.Message { return &vbatchv1.FinishBatch{} },
	vbatchv1.CommandType_COMMAND_TYPE_EXTEND_LEASES:    func() proto.Message { return &vbatchv1.ExtendLeases{} },
	vbatchv1.CommandType_COMMAND_TYPE_REMOVE_AGENT:     func() proto.Message { return &vbatchv1.RemoveAgent{} },
	vbatchv1.CommandType_COMMAND_TYPE_DRAIN_AGENT:      func() proto.Message { return &vbatchv1.DrainAgent{} },

	vbatchv1.CommandType_COMMAND_TYPE_SET_SERVER_INCARNATION: func() proto.Message { return &vbatchv1.SetServerIncarnation{} },
}

// typeByName maps a command message's full name to its type.
var typeByName = func() map[string]vbatchv1.CommandType {
	m := map[string]vbatchv1.CommandType{}
	for t, mk := range commandTypes {
		m[string(mk().ProtoReflect().Descriptor().FullName())] = t
	}
	return m
}()

// TypeOf returns the command type of a command message.
func TypeOf(cmd proto.Message) (vbatchv1.CommandType, error) {
	t, ok := typeByName[string(cmd.ProtoReflect().Descriptor().FullName())]
	if !ok {
		return 0, fmt.Errorf("%T is not a command", cmd)
	}
	return t, nil
}

// Encode wraps a command in a versioned envelope stamped with now.
func Encode(cmd proto.Message, now time.Time) ([]byte, error) {
	t, err := TypeOf(cmd)
	if err != nil {
		return nil, err
	}
	// Fields this build does not know can only have come in with a
	// request (an agent's Register or PutResults, parsed by a codec that
	// keeps them); committed, they would stop every server (Decode). They
	// are dropped: this build proposes only what it applies.
	if hasUnknownDeep(cmd.ProtoReflect()) {
		cmd = proto.Clone(cmd)
		dropUnknown(cmd.ProtoReflect())
	}
	payload, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", cmd, err)
	}
	return proto.Marshal(&vbatchv1.Envelope{
		Version:      EnvelopeVersion,
		Type:         t,
		TimeUnixNano: now.UnixNano(),
		Payload:      payload,
	})
}

// Decode opens an envelope and its command. An unknown type or version is
// an error: the caller decides whether that is fatal.
func Decode(data []byte) (*vbatchv1.Envelope, proto.Message, error) {
	env := &vbatchv1.Envelope{}
	if err := proto.Unmarshal(data, env); err != nil {
		return nil, nil, fmt.Errorf("decode envelope: %w", err)
	}
	if env.Version != EnvelopeVersion {
		return nil, nil, fmt.Errorf("envelope version %d: this build reads version %d", env.Version, EnvelopeVersion)
	}
	mk, ok := commandTypes[env.Type]
	if !ok {
		return nil, nil, fmt.Errorf("unknown command type %d (written by a newer vbatch?)", env.Type)
	}
	cmd := mk()
	if err := proto.Unmarshal(env.Payload, cmd); err != nil {
		return nil, nil, fmt.Errorf("decode %s: %w", env.Type, err)
	}
	// A field this build does not know is a newer level's (proposed only
	// once every server applies it): applying the command without it could
	// change the state differently from the servers that know it. Refuse,
	// as for an unknown command type, so an older build stops rather than
	// diverge.
	if path := unknownField(env.ProtoReflect(), "envelope"); path != "" {
		return nil, nil, fmt.Errorf("decode %s: %s holds a field this build does not know (written by a newer vbatch?)", env.Type, path)
	}
	if path := unknownField(cmd.ProtoReflect(), env.Type.String()); path != "" {
		return nil, nil, fmt.Errorf("decode %s: %s holds a field this build does not know (written by a newer vbatch?)", env.Type, path)
	}
	return env, cmd, nil
}

// unknownField returns the path of the first message under m (m itself
// included) that holds fields its schema does not define, or "". Fields
// whose numbers the schema reserves (retired ones, which old log entries
// may still carry and this build ignores by design) do not count.
func unknownField(m protoreflect.Message, path string) string {
	found := ""
	walkMessages(m, path, func(sub protoreflect.Message, at string) bool {
		if !onlyReserved(sub.Descriptor(), sub.GetUnknown()) {
			found = at
		}
		return found == ""
	})
	return found
}

// onlyReserved reports whether every field in raw (unknown bytes of a
// message of type d) has a number d reserves.
func onlyReserved(d protoreflect.MessageDescriptor, raw protoreflect.RawFields) bool {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 || !d.ReservedRanges().Has(num) {
			return false
		}
		raw = raw[n:]
		m := protowire.ConsumeFieldValue(num, typ, raw)
		if m < 0 {
			return false
		}
		raw = raw[m:]
	}
	return true
}

// hasUnknownDeep reports whether m or any message under it holds unknown
// bytes, reserved numbers included.
func hasUnknownDeep(m protoreflect.Message) bool {
	found := false
	walkMessages(m, "", func(sub protoreflect.Message, _ string) bool {
		found = len(sub.GetUnknown()) > 0
		return !found
	})
	return found
}

// dropUnknown clears the unknown bytes of m and of every message under it.
func dropUnknown(m protoreflect.Message) {
	walkMessages(m, "", func(sub protoreflect.Message, _ string) bool {
		sub.SetUnknown(nil)
		return true
	})
}

// walkMessages calls fn on m, then on every message set under it, each
// with its field path from path, until fn returns false; it reports
// whether the walk went to the end.
func walkMessages(m protoreflect.Message, path string, fn func(sub protoreflect.Message, at string) bool) bool {
	if path == "" {
		path = string(m.Descriptor().Name())
	}
	if !fn(m, path) {
		return false
	}
	more := true
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		sub := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					more = walkMessages(mv.Message(), sub, fn)
					return more
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				l := v.List()
				for i := 0; i < l.Len() && more; i++ {
					more = walkMessages(l.Get(i).Message(), sub, fn)
				}
			}
		case fd.Message() != nil:
			more = walkMessages(v.Message(), sub, fn)
		}
		return more
	})
	return more
}

// Stamp replaces the time of an encoded envelope; the leader stamps every
// command it proposes, forwarded ones included.
func Stamp(data []byte, now time.Time) ([]byte, error) {
	env := &vbatchv1.Envelope{}
	if err := proto.Unmarshal(data, env); err != nil {
		return nil, fmt.Errorf("decode envelope: %w", err)
	}
	env.TimeUnixNano = now.UnixNano()
	return proto.Marshal(env)
}
