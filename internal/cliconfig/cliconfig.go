// Package cliconfig loads a --config file into a command's flags: the file
// is a JSON object whose keys are the flag names; flags given on the
// command line win.
package cliconfig

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Apply reads path and sets every flag it names that the command line did
// not set. Lists may be JSON arrays; other values are strings, numbers or
// booleans.
func Apply(fs *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var kv map[string]any
	if err := json.Unmarshal(data, &kv); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	for key, v := range kv {
		f := fs.Lookup(key)
		if f == nil {
			return fmt.Errorf("config %s: unknown key %q", path, key)
		}
		if f.Changed {
			continue
		}
		var vals []string
		switch t := v.(type) {
		case []any:
			for _, e := range t {
				vals = append(vals, fmt.Sprint(e))
			}
		case float64:
			vals = []string{strings.TrimSuffix(fmt.Sprintf("%f", t), ".000000")}
		default:
			vals = []string{fmt.Sprint(t)}
		}
		for _, s := range vals {
			if err := fs.Set(key, s); err != nil {
				return fmt.Errorf("config %s: key %q: %w", path, key, err)
			}
		}
	}
	return nil
}
