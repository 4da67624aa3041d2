package fsm

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func TestEveryCommandTypeHasAMessage(t *testing.T) {
	for n, name := range vbatchv1.CommandType_name {
		typ := vbatchv1.CommandType(n)
		if typ == vbatchv1.CommandType_COMMAND_TYPE_UNSPECIFIED {
			continue
		}
		mk, ok := commandTypes[typ]
		if !ok {
			t.Fatalf("%s has no command message", name)
		}
		got, err := TypeOf(mk())
		if err != nil || got != typ {
			t.Fatalf("TypeOf(%T) = %v, %v; want %s", mk(), got, err, name)
		}
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	now := time.Unix(1_700_000_000, 123_456_789)
	cmd := &vbatchv1.GrantLease{BatchId: "b", Chunk: 3, AgentId: "a", ExpiresAt: 42}
	data, err := Encode(cmd, now)
	if err != nil {
		t.Fatal(err)
	}
	env, got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if env.Version != EnvelopeVersion || env.Type != vbatchv1.CommandType_COMMAND_TYPE_GRANT_LEASE || env.TimeUnixNano != now.UnixNano() {
		t.Fatalf("envelope = %v", env)
	}
	if !proto.Equal(got, cmd) {
		t.Fatalf("decoded %v, want %v", got, cmd)
	}
}

func TestEncodeRefusesNonCommands(t *testing.T) {
	if _, err := Encode(&vbatchv1.Batch{}, time.Now()); err == nil {
		t.Fatal("a Batch record was encoded as a command")
	}
	if _, err := TypeOf(&vbatchv1.Result{}); err == nil {
		t.Fatal("TypeOf accepted a Result")
	}
}

func TestStampChangesOnlyTheTime(t *testing.T) {
	cmd := &vbatchv1.CancelBatch{BatchId: "b", Project: "p"}
	data, err := Encode(cmd, time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	later := time.Unix(2_000_000_000, 5)
	stamped, err := Stamp(data, later)
	if err != nil {
		t.Fatal(err)
	}
	env, got, err := Decode(stamped)
	if err != nil {
		t.Fatal(err)
	}
	if env.TimeUnixNano != later.UnixNano() || !proto.Equal(got, cmd) {
		t.Fatalf("stamped envelope %v carries %v", env, got)
	}
	if _, err := Stamp([]byte{0xff}, later); err == nil {
		t.Fatal("Stamp accepted garbage")
	}
}

func envelope(t *testing.T, env *vbatchv1.Envelope) []byte {
	t.Helper()
	data, err := proto.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeRefusesWhatItCannotRead(t *testing.T) {
	payload, _ := proto.Marshal(&vbatchv1.DrainAgent{AgentId: "a"})
	cases := map[string][]byte{
		"garbage":       {0xff, 0xff, 0xff},
		"newer version": envelope(t, &vbatchv1.Envelope{Version: 2, Type: vbatchv1.CommandType_COMMAND_TYPE_DRAIN_AGENT, Payload: payload}),
		"unknown type":  envelope(t, &vbatchv1.Envelope{Version: 1, Type: 999, Payload: payload}),
		"no type":       envelope(t, &vbatchv1.Envelope{Version: 1, Payload: payload}),
		"bad payload":   envelope(t, &vbatchv1.Envelope{Version: 1, Type: vbatchv1.CommandType_COMMAND_TYPE_DRAIN_AGENT, Payload: []byte{0xff}}),
	}
	// Fields of a newer level, at the top of the command, inside a nested
	// message, and in the envelope.
	newer := protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1)
	chunk, _ := proto.Marshal(&vbatchv1.Chunk{Index: 0, EndLine: 10})
	chunksField := (&vbatchv1.StartBatch{}).ProtoReflect().Descriptor().Fields().ByName("chunks").Number()
	nested := protowire.AppendBytes(protowire.AppendTag(nil, chunksField, protowire.BytesType), append(chunk, newer...))
	cases["newer field"] = envelope(t, &vbatchv1.Envelope{Version: 1, Type: vbatchv1.CommandType_COMMAND_TYPE_DRAIN_AGENT, Payload: append(payload, newer...)})
	cases["newer nested field"] = envelope(t, &vbatchv1.Envelope{Version: 1, Type: vbatchv1.CommandType_COMMAND_TYPE_START_BATCH, Payload: nested})
	env := envelope(t, &vbatchv1.Envelope{Version: 1, Type: vbatchv1.CommandType_COMMAND_TYPE_DRAIN_AGENT, Payload: payload})
	cases["newer envelope field"] = append(env, newer...)
	for name, data := range cases {
		if _, _, err := Decode(data); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// The same nested message without the newer field decodes.
	plain := protowire.AppendBytes(protowire.AppendTag(nil, chunksField, protowire.BytesType), chunk)
	if _, _, err := Decode(envelope(t, &vbatchv1.Envelope{Version: 1, Type: vbatchv1.CommandType_COMMAND_TYPE_START_BATCH, Payload: plain})); err != nil {
		t.Errorf("plain start batch: %v", err)
	}
}

// An entry this build cannot decode stops the node: applying around it
// would make this node's state diverge from its peers'.
func TestApplyPanicsOnUndecodableEntry(t *testing.T) {
	payload, _ := proto.Marshal(&vbatchv1.DrainAgent{AgentId: "a"})
	for name, data := range map[string][]byte{
		"garbage":      {0xff, 0xff},
		"unknown type": envelope(t, &vbatchv1.Envelope{Version: 1, Type: 999, Payload: payload}),
	} {
		t.Run(name, func(t *testing.T) {
			f := New()
			defer func() {
				r := recover()
				if r == nil {
					t.Fatal("no panic")
				}
				if msg, _ := r.(string); !strings.Contains(msg, "raft entry 7") {
					t.Fatalf("panic %q does not name the entry", r)
				}
				if f.AppliedIndex() != 0 {
					t.Fatal("undecodable entry counted as applied")
				}
			}()
			f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: data})
		})
	}
}

// TestEncodeDropsUnknownFields: a field this build does not know, come in
// with an agent's request (a newer agent, or a hostile one), is dropped
// when the command is proposed rather than committed to stop every server.
func TestEncodeDropsUnknownFields(t *testing.T) {
	newer := protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1)
	gpu := &vbatchv1.GPU{Name: "H100"}
	gpu.ProtoReflect().SetUnknown(newer)
	ag := &vbatchv1.Agent{Id: "a1", Gpus: []*vbatchv1.GPU{gpu}}
	ag.ProtoReflect().SetUnknown(newer)
	cmd := &vbatchv1.RegisterAgent{Agent: ag}
	data, err := Encode(cmd, time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	_, got, err := Decode(data)
	if err != nil {
		t.Fatalf("decode what Encode wrote: %v", err)
	}
	if g := got.(*vbatchv1.RegisterAgent).Agent; g.Id != "a1" || g.Gpus[0].Name != "H100" {
		t.Fatalf("decoded %v", g)
	}
	if len(ag.ProtoReflect().GetUnknown()) == 0 || len(gpu.ProtoReflect().GetUnknown()) == 0 {
		t.Fatal("Encode changed the caller's message")
	}
}

// TestDecodeAcceptsRetiredFields: a field number the schema reserves (a
// retired field, as old log entries may hold) is not a newer level's.
func TestDecodeAcceptsRetiredFields(t *testing.T) {
	d := (&vbatchv1.CommitPart{}).ProtoReflect().Descriptor()
	if d.ReservedRanges().Len() == 0 {
		t.Fatal("CommitPart reserves no field number: pick another message with a retired field")
	}
	num := d.ReservedRanges().Get(0)[0]
	payload, _ := proto.Marshal(&vbatchv1.CommitPart{BatchId: "b"})
	payload = protowire.AppendVarint(protowire.AppendTag(payload, num, protowire.VarintType), 1)
	data := envelope(t, &vbatchv1.Envelope{Version: 1, Type: vbatchv1.CommandType_COMMAND_TYPE_COMMIT_PART, Payload: payload})
	if _, _, err := Decode(data); err != nil {
		t.Fatalf("a retired field refused: %v", err)
	}
}
