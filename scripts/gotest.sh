#!/usr/bin/env bash
# gotest.sh runs `go test "$@"`, streaming its output, and when it fails
# repeats at the very end what a reader of a truncated log needs: every
# failed test and, for a package that timed out, the tests that were still
# running (go prints them at the top of a goroutine dump that can run to
# megabytes, so a log's tail alone would not show them).
set -uo pipefail
log=$(mktemp "${TMPDIR:-/tmp}/gotest.XXXXXX")
trap 'rm -f "$log"' EXIT
"${GO:-go}" test "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "==> go test failed (exit $rc); summary:"
  # After the panic line go lists the running tests, one per line, up
  # to the first blank line.
  awk '/^panic: test timed out/ {p = 1} p && /^$/ {p = 0} p' "$log" || true
  grep -E '^(\s*--- FAIL|FAIL|panic: )' "$log" | grep -v '^panic: test timed out' | head -50 || true
  grep -E -m3 -A3 '^WARNING: DATA RACE' "$log" || true
fi
exit "$rc"
