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

failed=()
total=0
while read -r dir name; do
  total=$((total + 1))
  echo "==> $name (./$dir, $FUZZTIME)"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "./$dir"; then
    failed+=("$dir $name")
  fi
done <<<"$targets"

if [ ${#failed[@]} -gt 0 ]; then
  echo "==> ${#failed[@]} of $total fuzz targets failed:" >&2
  printf '    %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "==> all $total fuzz targets passed"
