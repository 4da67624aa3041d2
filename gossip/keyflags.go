package gossip

import (
	"errors"
	"path/filepath"
)

// KeyringFileName is the keyring file's name in a node's data dir.
const KeyringFileName = "gossip-keyring.json"

// KeysFromFlags turns the --gossip-key and --gossip-key-file values into
// the initial keyring for Config.Keys: nil when neither is set.
func KeysFromFlags(key, keyFile string) ([][]byte, error) {
	switch {
	case key != "" && keyFile != "":
		return nil, errors.New("give --gossip-key or --gossip-key-file, not both")
	case key != "":
		k, err := ParseKey(key)
		if err != nil {
			return nil, err
		}
		return [][]byte{k}, nil
	case keyFile != "":
		k, err := LoadKeyFile(keyFile)
		if err != nil {
			return nil, err
		}
		return [][]byte{k}, nil
	}
	return nil, nil
}

// KeyringPath is where a node keeps its keyring: dataDir/KeyringFileName.
func KeyringPath(dataDir string) string { return filepath.Join(dataDir, KeyringFileName) }
