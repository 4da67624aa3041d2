package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// mustJoin joins p to seed and waits until both see each other.
func mustJoin(t *testing.T, p, seed *Pool) {
	t.Helper()
	if _, err := p.Join([]string{seed.Addr()}); err != nil {
		t.Fatalf("%s join %s: %v", p.cfg.Name, seed.cfg.Name, err)
	}
	waitFor(t, p.cfg.Name+" and "+seed.cfg.Name+" see each other", func() bool {
		_, a := p.Member(seed.cfg.Name)
		_, b := seed.Member(p.cfg.Name)
		return a && b
	})
}

// mustNotJoin checks that p's join to seed is refused and neither side
// learned of the other.
func mustNotJoin(t *testing.T, p, seed *Pool) {
	t.Helper()
	if n, err := p.Join([]string{seed.Addr()}); err == nil {
		t.Fatalf("%s joined %s (%d contacted)", p.cfg.Name, seed.cfg.Name, n)
	}
	if _, ok := seed.Member(p.cfg.Name); ok {
		t.Fatalf("%s learned of %s", seed.cfg.Name, p.cfg.Name)
	}
	if _, ok := p.Member(seed.cfg.Name); ok {
		t.Fatalf("%s learned of %s", p.cfg.Name, seed.cfg.Name)
	}
}

func TestEncryptionAndLabelGateJoin(t *testing.T) {
	k1, _ := newKey(t)
	k2, _ := newKey(t)
	seed := startPool(t, Config{Name: "seed", Keys: [][]byte{k1}, Label: "prod"})

	mustJoin(t, startPool(t, Config{Name: "same", Keys: [][]byte{k1}, Label: "prod"}), seed)
	mustNotJoin(t, startPool(t, Config{Name: "wrongkey", Keys: [][]byte{k2}, Label: "prod"}), seed)
	mustNotJoin(t, startPool(t, Config{Name: "nokey", Label: "prod"}), seed)
	mustNotJoin(t, startPool(t, Config{Name: "otherlabel", Keys: [][]byte{k1}, Label: "staging"}), seed)
	mustNotJoin(t, startPool(t, Config{Name: "nolabel", Keys: [][]byte{k1}}), seed)
	// An extra key the seed lacks does not matter while the joiner
	// encrypts with the seed's key: that is what makes rotation possible.
	mustJoin(t, startPool(t, Config{Name: "extra", Keys: [][]byte{k1, k2}, Label: "prod"}), seed)
	// But a joiner encrypting with a key the seed lacks is refused, even
	// though it could read the seed.
	mustNotJoin(t, startPool(t, Config{Name: "ahead", Keys: [][]byte{k2, k1}, Label: "prod"}), seed)

	// And the other way round: encrypted nodes cannot join a plain pool,
	// and labels fence plain pools too.
	plain := startPool(t, Config{Name: "plain", Label: "dev"})
	mustNotJoin(t, startPool(t, Config{Name: "enc", Keys: [][]byte{k1}, Label: "dev"}), plain)
	mustNotJoin(t, startPool(t, Config{Name: "plainother", Label: "qa"}), plain)
	mustJoin(t, startPool(t, Config{Name: "plainsame", Label: "dev"}), plain)
}

func TestKeyringRotationAcrossPool(t *testing.T) {
	kOld, sOld := newKey(t)
	kNew, sNew := newKey(t)
	var pools []*Pool
	for i := range 3 {
		p := startPool(t, Config{Name: fmt.Sprintf("n%d", i), Keys: [][]byte{kOld}, Label: "c"})
		if i > 0 {
			mustJoin(t, p, pools[0])
		}
		pools = append(pools, p)
	}
	waitFor(t, "3 members everywhere", func() bool {
		for _, p := range pools {
			if len(p.Members()) != 3 {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	op := func(caller *Pool, kind KeyringOpKind, key string) *KeyringResult {
		t.Helper()
		res, err := caller.KeyringOp(ctx, kind, key)
		if err != nil {
			t.Fatalf("%s from %s: %v (%+v)", kind, caller.cfg.Name, err, res)
		}
		if res.NumNodes != 3 || res.NumResp != 3 || res.NumErr != 0 || len(res.Errors) != 0 {
			t.Fatalf("%s: %+v", kind, res)
		}
		return res
	}

	op(pools[0], KeyringInstall, sNew)
	res := op(pools[1], KeyringList, "")
	if len(res.Keys) != 2 || res.Keys[sOld] != 3 || res.Keys[sNew] != 3 || len(res.PrimaryKeys) != 1 || res.PrimaryKeys[sOld] != 3 {
		t.Fatalf("after install: %+v", res)
	}
	op(pools[2], KeyringUse, sNew)
	res = op(pools[0], KeyringList, "")
	if len(res.PrimaryKeys) != 1 || res.PrimaryKeys[sNew] != 3 {
		t.Fatalf("after use: %+v", res)
	}
	op(pools[1], KeyringRemove, sOld)
	res = op(pools[2], KeyringList, "")
	if len(res.Keys) != 1 || res.Keys[sNew] != 3 || res.PrimaryKeys[sNew] != 3 {
		t.Fatalf("after remove: %+v", res)
	}
	// Removing again is a no-op everywhere, so retries are safe.
	op(pools[0], KeyringRemove, sOld)

	mustNotJoin(t, startPool(t, Config{Name: "old", Keys: [][]byte{kOld}, Label: "c"}), pools[0])
	fresh := startPool(t, Config{Name: "fresh", Keys: [][]byte{kNew}, Label: "c"})
	mustJoin(t, fresh, pools[1])
	waitFor(t, "fresh node known to all", func() bool {
		for _, p := range pools {
			if _, ok := p.Member("fresh"); !ok {
				return false
			}
		}
		return true
	})
	if res := op2(t, fresh, KeyringList); res.NumResp != 4 || res.Keys[sNew] != 4 {
		t.Fatalf("list from fresh node: %+v", res)
	}
}

func op2(t *testing.T, p *Pool, kind KeyringOpKind) *KeyringResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, err := p.KeyringOp(ctx, kind, "")
	if err != nil {
		t.Fatalf("%s: %v", kind, err)
	}
	return res
}

func TestKeyringOpRefusals(t *testing.T) {
	ctx := t.Context()
	plain := startPool(t, Config{Name: "plain"})
	if plain.EncryptionEnabled() {
		t.Fatal("encryption on without keys")
	}
	_, s := newKey(t)
	if _, err := plain.KeyringOp(ctx, KeyringInstall, s); !errors.Is(err, ErrNoKeyring) {
		t.Fatalf("install on plain pool: %v", err)
	}
	if _, err := plain.KeyringOp(ctx, KeyringList, ""); !errors.Is(err, ErrNoKeyring) {
		t.Fatalf("list on plain pool: %v", err)
	}

	k1, s1 := newKey(t)
	_, s2 := newKey(t)
	p := startPool(t, Config{Name: "p", Keys: [][]byte{k1}})
	if _, err := p.KeyringOp(ctx, KeyringRemove, s1); !errors.Is(err, ErrPrimaryKey) {
		t.Fatalf("remove primary: %v", err)
	}
	if _, err := p.KeyringOp(ctx, KeyringUse, s2); !errors.Is(err, ErrKeyNotInstalled) {
		t.Fatalf("use of uninstalled key: %v", err)
	}
	for _, bad := range []string{"", "xyz", s1[:20]} {
		if _, err := p.KeyringOp(ctx, KeyringInstall, bad); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("install %q: %v", bad, err)
		}
	}
	if _, err := p.KeyringOp(ctx, KeyringOpKind("rotate"), s2); err == nil {
		t.Fatal("unknown op accepted")
	}
	if _, err := ParseKeyringOp("rotate"); err == nil {
		t.Fatal("ParseKeyringOp accepted rotate")
	}
	if op, err := ParseKeyringOp("use"); err != nil || op != KeyringUse {
		t.Fatalf("ParseKeyringOp(use) = %q, %v", op, err)
	}
	if _, err := p.KeyringOp(ctx, KeyringList, s1); err == nil {
		t.Fatal("list with a key accepted")
	}
	// Nothing was changed by the refusals.
	res := op2(t, p, KeyringList)
	if len(res.Keys) != 1 || res.PrimaryKeys[s1] != 1 {
		t.Fatalf("ring after refusals: %+v", res)
	}
}

func TestKeyringOpPerNodeFailure(t *testing.T) {
	k1, _ := newKey(t)
	k2, s2 := newKey(t)
	// a encrypts with k1, b with k2; both hold both, so they talk.
	a := startPool(t, Config{Name: "a", Keys: [][]byte{k1, k2}})
	b := startPool(t, Config{Name: "b", Keys: [][]byte{k2, k1}})
	mustJoin(t, b, a)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, err := a.KeyringOp(ctx, KeyringRemove, s2)
	if !errors.Is(err, ErrKeyringPartial) {
		t.Fatalf("remove of b's primary: %v", err)
	}
	if res.NumNodes != 2 || res.NumResp != 2 || res.NumErr != 1 || !strings.Contains(res.Errors["b"], "primary") {
		t.Fatalf("result %+v", res)
	}
	// Each member decided for itself: a dropped k2, b kept it.
	if n := len(a.keyring.GetKeys()); n != 1 {
		t.Fatalf("a holds %d keys", n)
	}
	if n := len(b.keyring.GetKeys()); n != 2 {
		t.Fatalf("b holds %d keys", n)
	}
}

func TestKeyringOpUnansweredMember(t *testing.T) {
	k, _ := newKey(t)
	a := startPool(t, Config{Name: "a", Keys: [][]byte{k}})
	b := startPool(t, Config{Name: "b", Keys: [][]byte{k}})
	mustJoin(t, b, a)
	b.stopKeyring() // b stays in the pool but never answers
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	res, err := a.KeyringOp(ctx, KeyringList, "")
	if !errors.Is(err, ErrKeyringPartial) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if res.NumNodes != 2 || res.NumResp != 1 || res.NumErr != 1 || !strings.Contains(res.Errors["b"], "no response") {
		t.Fatalf("result %+v", res)
	}
}

func TestUserMessagesIgnoredWithoutEncryption(t *testing.T) {
	// Bare pools without a worker, so what notifyMsg queues stays queued.
	bare := func(kr *memberlist.Keyring) *Pool {
		p := &Pool{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		p.keyring, p.inbox = kr, make(chan []byte, 4)
		return p
	}
	msg, err := encodeMsg(msgKeyringRequest, keyringRequest{ID: "x", From: "evil", Op: KeyringList})
	if err != nil {
		t.Fatal(err)
	}
	plain := bare(nil)
	plain.notifyMsg(msg)
	if len(plain.inbox) != 0 {
		t.Fatal("plain pool queued a keyring request")
	}
	k, _ := newKey(t)
	kr, err := memberlist.NewKeyring(nil, k)
	if err != nil {
		t.Fatal(err)
	}
	e := bare(kr)
	e.notifyMsg([]byte{99, '{', '}'})
	e.notifyMsg(nil)
	e.notifyMsg(append([]byte{msgKeyringRequest}, make([]byte, maxMsgSize)...))
	if len(e.inbox) != 0 {
		t.Fatal("queued a message of unknown type, empty or oversized")
	}
	e.notifyMsg(msg)
	if len(e.inbox) != 1 {
		t.Fatal("encrypted pool did not queue a keyring request")
	}
}
