// Package version holds the build version, set by the linker.
package version

// Version is the release this binary was built from ("dev" when unset).
var Version = "dev"
