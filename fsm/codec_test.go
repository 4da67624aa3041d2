package fsm

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
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
	for name, data := range cases {
		if _, _, err := Decode(data); err == nil {
			t.Errorf("%s: decoded", name)
		}
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
