//go:build !unix

package dirlock

import "os"

// lockFile does nothing where flock is missing: the directory is not
// guarded there.
func lockFile(*os.File) error { return nil }
