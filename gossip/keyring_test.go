package gossip

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newKey returns a fresh random key, raw and base64.
func newKey(t *testing.T) ([]byte, string) {
	t.Helper()
	s, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKey(s)
	if err != nil {
		t.Fatalf("parse generated key %q: %v", s, err)
	}
	return k, s
}

// startPool starts a pool on a loopback port with fast timings and leaves
// it when the test ends.
func startPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1:0"
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 500 * time.Millisecond // a 100 ms probe (50 ms timeout) can declare a live member dead on a loaded machine
	}
	if cfg.Meta.Role == "" {
		cfg.Meta.Role = RoleAgent
	}
	p, err := Start(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { p.Leave(200 * time.Millisecond) })
	return p
}

func TestParseKey(t *testing.T) {
	k, s := newKey(t)
	if len(k) != KeySize || base64.StdEncoding.EncodeToString(k) != s {
		t.Fatalf("round trip: %d bytes, %q", len(k), s)
	}
	if got, err := ParseKey("  " + s + "\n"); err != nil || !bytes.Equal(got, k) {
		t.Fatalf("whitespace around key: %v", err)
	}
	_, other := newKey(t)
	if s == other {
		t.Fatal("two generated keys are equal")
	}
	bad := map[string]string{
		"empty":        "",
		"blank":        " \n",
		"not base64":   "not*base64!",
		"url encoding": strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32))),
		"16 bytes":     base64.StdEncoding.EncodeToString(make([]byte, 16)),
		"31 bytes":     base64.StdEncoding.EncodeToString(make([]byte, 31)),
		"33 bytes":     base64.StdEncoding.EncodeToString(make([]byte, 33)),
	}
	for name, in := range bad {
		if _, err := ParseKey(in); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s (%q): got %v, want ErrInvalidKey", name, in, err)
		}
	}
	if _, err := ParseKey(base64.StdEncoding.EncodeToString(make([]byte, 16))); err == nil || !strings.Contains(err.Error(), "16 bytes") {
		t.Errorf("error does not say the length: %v", err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	k, s := newKey(t)
	good := filepath.Join(dir, "key")
	if err := os.WriteFile(good, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadKeyFile(good); err != nil || !bytes.Equal(got, k) {
		t.Fatalf("LoadKeyFile: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("c2hvcnQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(bad); !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad key file: %v", err)
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing key file: %v", err)
	}
}

func readKeyring(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatalf("keyring file %s: %v", path, err)
	}
	return keys
}

func TestKeyringFilePersistedAndOverridesKeys(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "serf", "local.keyring")
	k1, s1 := newKey(t)
	_, s2 := newKey(t)
	k3, _ := newKey(t)

	p := startPool(t, Config{Name: "n1", Keys: [][]byte{k1}, KeyringFile: path})
	if !p.EncryptionEnabled() {
		t.Fatal("encryption off with a key")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("keyring file not seeded from Keys: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file mode %v", fi.Mode().Perm())
	}
	if got := readKeyring(t, path); len(got) != 1 || got[0] != s1 {
		t.Fatalf("seeded keyring %v", got)
	}
	ctx := t.Context()
	if _, err := p.KeyringOp(ctx, KeyringInstall, s2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.KeyringOp(ctx, KeyringUse, s2); err != nil {
		t.Fatal(err)
	}
	if got := readKeyring(t, path); strings.Join(got, ",") != s2+","+s1 {
		t.Fatalf("keyring after install+use %v, want [%s %s]", got, s2, s1)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("leftover files next to the keyring: %v", entries)
	}
	if err := p.Leave(200 * time.Millisecond); err != nil {
		t.Logf("leave: %v", err)
	}

	// Restart with a different key: the file wins.
	p2 := startPool(t, Config{Name: "n1", Keys: [][]byte{k3}, KeyringFile: path})
	res, err := p2.KeyringOp(ctx, KeyringList, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Keys) != 2 || res.Keys[s1] != 1 || res.Keys[s2] != 1 || res.PrimaryKeys[s2] != 1 {
		t.Fatalf("reloaded keyring %+v", res)
	}
	if got := readKeyring(t, path); strings.Join(got, ",") != s2+","+s1 {
		t.Fatalf("restart rewrote the keyring file: %v", got)
	}
	// And the reloaded ring is what the node talks with.
	k2, _ := ParseKey(s2)
	j := startPool(t, Config{Name: "j", Keys: [][]byte{k2}})
	if _, err := j.Join([]string{p2.Addr()}); err != nil {
		t.Fatalf("node with the persisted primary key cannot join: %v", err)
	}
	waitFor(t, "join", func() bool { return len(p2.Members()) == 2 })

	// A file alone turns encryption on.
	p3 := startPool(t, Config{Name: "n3", KeyringFile: path})
	if !p3.EncryptionEnabled() {
		t.Fatal("keyring file without Keys left encryption off")
	}
}

func TestKeyringFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"not json": "nope",
		"empty":    "[]",
		"bad key":  `["c2hvcnQ="]`,
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if p, err := Start(Config{Name: "x", BindAddr: "127.0.0.1:0", KeyringFile: path}); err == nil {
			p.Leave(0)
			t.Errorf("%s: Start accepted keyring file %q", name, content)
		}
	}
	if p, err := Start(Config{Name: "x", BindAddr: "127.0.0.1:0", Keys: [][]byte{make([]byte, 16)}}); !errors.Is(err, ErrInvalidKey) {
		if p != nil {
			p.Leave(0)
		}
		t.Errorf("16-byte key in Keys: %v", err)
	}
}

func TestKeyringFileWriteIsAtomicReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	k1, s1 := newKey(t)
	k2, s2 := newKey(t)
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeKeyringFile(path, [][]byte{k1, k2}); err != nil {
		t.Fatal(err)
	}
	if got := readKeyring(t, path); strings.Join(got, ",") != s1+","+s2 {
		t.Fatalf("keyring %v", got)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced file mode %v, %v", fi.Mode().Perm(), err)
	}
	keys, err := readKeyringFile(path)
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], k1) {
		t.Fatalf("read back: %v", err)
	}
}
