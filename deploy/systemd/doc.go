// Package systemd holds the systemd units that run vbatch on bare metal:
// vbatch-coordinator.service and vbatch-agent.service, installed with the
// example configuration of deploy/config by scripts/install.sh (see
// docs/deployment.md).
//
// The package has no Go API. Its tests check the units with
// `systemd-analyze verify` and `systemd-analyze security`, pin their
// hardening, check every key of the example configs against the flags of
// the vbatch binary, and run scripts/install.sh into a staging root.
package systemd
