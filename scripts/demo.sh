#!/usr/bin/env bash
# The demo behind `make demo`: start a local cluster (three coordinators,
# two sim agents), submit a sample batch with vbctl, show progress and a few
# output lines, then stop everything. Exits 0 when the batch completed.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${DEMO_REQUESTS:-2000}
BASE=${DEMO_BASE_PORT:-18000}
work=$(mktemp -d -t vbatch-demo-XXXXXX)
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid"
    for _ in $(seq 1 100); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> starting vbatch dev (3 coordinators, 2 sim agents) on ports from $BASE"
bin/vbatch dev --base-port "$BASE" --data-dir "$work/data" --sim-latency 20ms >"$work/dev.out" 2>&1 &
dev_pid=$!
for _ in $(seq 1 300); do
  grep -q "vbatch dev ready" "$work/dev.out" && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.out"; exit 1; }
  sleep 0.1
done
grep -q "vbatch dev ready" "$work/dev.out" || { echo "cluster did not start"; cat "$work/dev.out"; exit 1; }
cat "$work/dev.out"
export VBATCH_ADDR="http://127.0.0.1:$BASE"

echo "==> writing a sample batch of $N chat requests"
for i in $(seq 1 "$N"); do
  printf '{"custom_id":"request-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"Tell me fact number %d about GPUs."}],"max_tokens":24}}\n' "$i" "$i"
done >"$work/sample.jsonl"

echo "==> cluster status"
bin/vbctl cluster status

echo "==> vbctl batches submit sample.jsonl --wait"
mkdir -p "$work/out"
bin/vbctl batches submit "$work/sample.jsonl" --wait --poll 500ms --output-dir "$work/out"

out=$(ls "$work"/out/*_output.jsonl)
echo "==> first output lines"
head -n 3 "$out" | cut -c1-300
lines=$(wc -l <"$out")
echo "==> $lines of $N requests answered; agents:"
bin/vbctl agents list
if [ "$lines" -ne "$N" ]; then
  echo "expected $N output lines, got $lines"
  exit 1
fi
echo "==> the batch completed"
