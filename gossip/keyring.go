package gossip

// Gossip encryption keys and the keyring file.
//
// The pool encrypts every gossip packet and stream with AES-256-GCM under the
// primary key of a memberlist.Keyring and decrypts with any key on the ring,
// which is what lets keys be rotated without a flag day (see KeyringOp). The
// keyring is persisted, as Serf and Consul do, as a JSON array of base64 keys
// with the primary first, so a node restarts with the keys the cluster
// rotated to rather than the ones on its command line.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/memberlist"
)

// KeySize is the length in bytes of a gossip key: AES-256.
const KeySize = 32

// ErrInvalidKey is returned (wrapped) for a key that is not the base64
// standard encoding of exactly KeySize bytes.
var ErrInvalidKey = errors.New("invalid gossip key")

// ParseKey decodes a gossip key given as the base64 standard encoding of
// exactly 32 bytes, the format GenerateKey and `vbatch gossip keygen`
// produce. Surrounding whitespace is ignored.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not standard base64: %v", ErrInvalidKey, err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: decodes to %d bytes, want %d", ErrInvalidKey, len(key), KeySize)
	}
	return key, nil
}

// GenerateKey returns a new random gossip key, base64 encoded, suitable for
// ParseKey and for every node's --gossip-key.
func GenerateKey() (string, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("generate gossip key: %w", err)
	}
	return encodeKey(key), nil
}

// LoadKeyFile reads a file holding one base64 gossip key (surrounding
// whitespace, such as a trailing newline, is ignored), as for
// --gossip-key-file.
func LoadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip key file: %w", err)
	}
	key, err := ParseKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: %w", path, err)
	}
	return key, nil
}

func encodeKey(key []byte) string { return base64.StdEncoding.EncodeToString(key) }

func checkKey(key []byte) error {
	if len(key) != KeySize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrInvalidKey, len(key), KeySize)
	}
	return nil
}

// setupKeyring builds the keyring Start gives memberlist, or nil when
// encryption is off. A keyring file that exists wins over cfg.Keys, as
// Consul's keyring wins over its encrypt option, because the file holds
// the result of later rotations; cfg.Keys then only seeds a missing file.
func setupKeyring(cfg Config, logger *slog.Logger) (*memberlist.Keyring, error) {
	for i, k := range cfg.Keys {
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("gossip: key %d: %w", i, err)
		}
	}
	keys := cfg.Keys
	fromFile := false
	if cfg.KeyringFile != "" {
		fileKeys, err := readKeyringFile(cfg.KeyringFile)
		switch {
		case err == nil:
			if len(cfg.Keys) > 0 && !sameKeys(fileKeys, cfg.Keys) {
				logger.Warn("gossip keyring file exists; ignoring the configured keys", "file", cfg.KeyringFile)
			}
			keys, fromFile = fileKeys, true
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, fmt.Errorf("gossip: %w", err)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	kr, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip: keyring: %w", err)
	}
	if cfg.KeyringFile != "" && !fromFile {
		if err := writeKeyringFile(cfg.KeyringFile, kr.GetKeys()); err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
	}
	return kr, nil
}

func sameKeys(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// readKeyringFile reads a keyring file; an error wrapping os.ErrNotExist
// means there is none yet.
func readKeyringFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keyring file: %w", err)
	}
	var encoded []string
	if err := json.Unmarshal(b, &encoded); err != nil {
		return nil, fmt.Errorf("keyring file %s: not a JSON array of keys: %w", path, err)
	}
	if len(encoded) == 0 {
		return nil, fmt.Errorf("keyring file %s: no keys", path)
	}
	keys := make([][]byte, 0, len(encoded))
	for i, s := range encoded {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("keyring file %s: key %d: %w", path, i, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// writeKeyringFile replaces the keyring file atomically: a crash leaves
// either the old keyring or the new one, never a torn file that would stop
// the node from rejoining. The file is 0600: it holds the cluster's secret.
func writeKeyringFile(path string, keys [][]byte) error {
	encoded := make([]string, len(keys))
	for i, k := range keys {
		encoded[i] = encodeKey(k)
	}
	b, err := json.MarshalIndent(encoded, "", "  ")
	if err != nil {
		return fmt.Errorf("encode keyring: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keyring dir %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write keyring file %s: %w", path, err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	// CreateTemp already uses 0600; Chmod keeps that true whatever it does.
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("write keyring file %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write keyring file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync keyring file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close keyring file %s: %w", path, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("replace keyring file %s: %w", path, err)
	}
	ok = true
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		serr := d.Sync()
		d.Close()
		if serr != nil {
			return fmt.Errorf("sync keyring dir %s: %w", dir, serr)
		}
	}
	return nil
}
