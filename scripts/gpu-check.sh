#!/usr/bin/env bash
# One-shot check on a real GPU host: NVML discovery and telemetry through a
# one-coordinator cluster with an agent that reports the real GPUs. Writes
# what it saw under $OUT (default ./gpu-check-out). Needs bin/ from `make build`.
set -u
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
d=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; sleep 2; for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$d"; }
trap cleanup EXIT

(nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw --format=csv || echo "nvidia-smi not available") >"$OUT/nvidia-smi.csv" 2>&1
echo "== vbatch gpus"
bin/vbatch gpus --samples 3 --interval 1s | tee "$OUT/gpus.jsonl"

bin/vbatch coordinator --node-id c1 --data-dir "$d/c1" --http-addr 127.0.0.1:18000 --rpc-addr 127.0.0.1:18001 \
  --raft-addr 127.0.0.1:18002 --gossip-addr 127.0.0.1:18003 --bootstrap-expect 1 >"$OUT/coordinator.log" 2>&1 &
pids+=($!)
bin/vbatch sim --addr 127.0.0.1:18500 --latency 5ms >"$OUT/sim.log" 2>&1 &
pids+=($!)
bin/vbatch agent --node-id gpu-host --data-dir "$d/agent" --join 127.0.0.1:18003 --gossip-addr 127.0.0.1:18013 \
  --metrics-addr 127.0.0.1:18010 --engine openai --engine-url http://127.0.0.1:18500 --model sim-model >"$OUT/agent.log" 2>&1 &
pids+=($!)
export VBATCH_ADDR=http://127.0.0.1:18000
for _ in $(seq 1 100); do
  bin/vbctl agents list 2>/dev/null | grep -q "gpu-host.*alive" && break
  sleep 0.2
done
sleep 12 # two telemetry intervals
echo "== vbctl agents list"
bin/vbctl agents list | tee "$OUT/agents.txt"
curl -s http://127.0.0.1:18000/v1/admin/agents >"$OUT/agents.json"
for i in $(seq 1 500); do
  printf '{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"hi %d"}]}}\n' "$i" "$i"
done >"$d/in.jsonl"
echo "== a 500-request batch"
bin/vbctl batches submit "$d/in.jsonl" --wait --output-dir "$d" 2>&1 | tail -8 | tee "$OUT/batch.txt"
curl -s http://127.0.0.1:18010/metrics >"$OUT/agent-metrics.txt"
echo "== done"
