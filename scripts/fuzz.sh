#!/usr/bin/env bash
# The fuzzing behind `make fuzz`: find every Fuzz target of the module and
# run each in turn for FUZZTIME (default 30s), one package at a time as
# `go test -fuzz` requires. Their seed corpora already run in plain
# `go test`; this explores beyond them.
#
#   scripts/fuzz.sh               every target
#   scripts/fuzz.sh Upload        targets whose name matches a grep -E pattern
#   FUZZTIME=5m scripts/fuzz.sh   longer runs
#
# A failing input is written under the package's testdata/fuzz/<Name>/ by
# go test; commit it so the failure stays a regression test. Exits non-zero
# if any target failed, after running them all.
#
# Go 1.26's fuzzing coordinator may report a bare "context deadline
# exceeded" as the -fuzztime window closes, on a loaded machine, having
# found nothing (golang/go#75804, fixed in Go 1.27). A run that fails that
# way, with no failing input written, is run once more; a second bare
# deadline is reported and not counted as a failure. Anything else fails.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-30s}
pattern=${1:-.}
# go-nvml's headers warn on every build of a package that imports it.
export CGO_CFLAGS=${CGO_CFLAGS:--Wno-deprecated-declarations}

# Lines "dir name": every func FuzzXxx(f *testing.F) in a _test.go file.
targets=$(grep -rE --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]*\(' . \
  | grep -v '^\./\(\.git\|vendor\)/' \
  | sed -E 's#^\./(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)\($#\1 \2#; s#^\./[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)\($#. \1#' \
  | sort -u \
  | awk -v p="$pattern" '$2 ~ p')

if [ -z "$targets" ]; then
  echo "no fuzz target matches '$pattern'" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# fuzz_once runs one target; it returns 0 on success, 2 on a bare deadline
# (see above) and 1 on any other failure.
fuzz_once() {
  if go test -run '^$' -fuzz "^$2\$" -fuzztime "$FUZZTIME" "./$1" 2>&1 | tee "$log"; then
    return 0
  fi
  if grep -q 'context deadline exceeded' "$log" && ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$log"; then
    return 2
  fi
  return 1
}

failed=()
total=0
while read -r dir name; do
  total=$((total + 1))
  echo "==> $name (./$dir, $FUZZTIME)"
  rc=0
  fuzz_once "$dir" "$name" || rc=$?
  if [ $rc -eq 2 ]; then
    echo "==> $name: bare deadline at the end of -fuzztime (golang/go#75804); running it again"
    rc=0
    fuzz_once "$dir" "$name" || rc=$?
    if [ $rc -eq 2 ]; then
      echo "==> $name: bare deadline again, nothing found; not counted as a failure (golang/go#75804)"
      rc=0
    fi
  fi
  if [ $rc -ne 0 ]; then
    failed+=("$dir $name")
  fi
done <<<"$targets"

if [ ${#failed[@]} -gt 0 ]; then
  echo "==> ${#failed[@]} of $total fuzz targets failed:" >&2
  printf '    %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "==> all $total fuzz targets passed"
