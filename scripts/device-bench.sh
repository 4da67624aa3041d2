#!/usr/bin/env bash
# The two ratio benchmarks of docs/benchmarks.md on a lent device machine
# (16 cores, no Go): BenchmarkUpload200MB (upload through a follower ÷ dd)
# and BenchmarkPipeline50k (vbatch ÷ direct, coordinators' CPU ÷ agents').
# On the development VM the three coordinators, agents and simulators share
# two vCPUs; here each gets cores of its own, as on a fleet.
#
# Build here first (x86-64, glibc 2.36) with `make device-build` (stripped,
# about 57 MB), carry bin/, and run on the device: scripts/device-bench.sh
# (results under $OUT). It takes about two minutes there.
set -u
OUT=${OUT:-device-bench-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export VBATCH_BIN_DIR=$PWD/bin
{ nproc; grep -m1 'model name' /proc/cpuinfo; free -g | head -2; df -h . | tail -1; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
cd "$(mktemp -d)" || exit 1
"$VBATCH_BIN_DIR/e2e.test" -test.run '^$' -test.bench 'BenchmarkUpload200MB|BenchmarkPipeline50k' \
  -test.benchtime 1x -test.timeout 9m -test.v 2>&1 | tee "$OUT/bench.txt" | grep -E '^(Benchmark|ok|FAIL|PASS|---)|ratio|MB/s|cpu' 
