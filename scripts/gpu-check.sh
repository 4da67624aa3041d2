#!/usr/bin/env bash
# One-shot check on a real GPU host: NVML discovery and telemetry through a
# one-coordinator cluster secured as in production (TLS certificates made
# with `vbatch tls`, mutual TLS on RPC, HTTPS API, encrypted gossip), with an
# agent that reports the real GPUs. Writes what it saw under $OUT (default
# ./gpu-check-out). Needs bin/ from `make build`; curl for the scrapes.
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

echo "== certificates and gossip key"
pki="$d/pki"
mkdir -p "$pki"
bin/vbatch tls ca create --dir "$pki" --cluster-name gpucheck >/dev/null
bin/vbatch tls cert create --server --node c1 --cluster-name gpucheck --ca "$pki/vbatch-ca.pem" --ca-key "$pki/vbatch-ca-key.pem" --dir "$pki" >/dev/null
bin/vbatch tls cert create --agent --node gpu-host --cluster-name gpucheck --ca "$pki/vbatch-ca.pem" --ca-key "$pki/vbatch-ca-key.pem" --dir "$pki" >/dev/null
bin/vbatch gossip keygen >"$pki/gossip.key"
ls "$pki" | tee "$OUT/pki.txt"
root=gpu-check-root-key-0123456789abcdef

bin/vbatch coordinator --node-id c1 --data-dir "$d/c1" --http-addr 127.0.0.1:18000 --rpc-addr 127.0.0.1:18001 \
  --raft-addr 127.0.0.1:18002 --gossip-addr 127.0.0.1:18003 --bootstrap-expect 1 --root-key "$root" \
  --cluster-name gpucheck --tls-cert "$pki/gpucheck-server-vbatch-c1.pem" --tls-key "$pki/gpucheck-server-vbatch-c1-key.pem" \
  --tls-ca "$pki/vbatch-ca.pem" --gossip-key-file "$pki/gossip.key" >"$OUT/coordinator.log" 2>&1 &
pids+=($!)
bin/vbatch sim --addr 127.0.0.1:18500 --latency 5ms >"$OUT/sim.log" 2>&1 &
pids+=($!)
# No --node-id: the agent takes its id from its certificate.
bin/vbatch agent --data-dir "$d/agent" --join 127.0.0.1:18003 --gossip-addr 127.0.0.1:18013 \
  --metrics-addr 127.0.0.1:18010 --engine openai --engine-url http://127.0.0.1:18500 --model sim-model \
  --cluster-name gpucheck --tls-cert "$pki/gpucheck-agent-vbatch-gpu-host.pem" --tls-key "$pki/gpucheck-agent-vbatch-gpu-host-key.pem" \
  --tls-ca "$pki/vbatch-ca.pem" --gossip-key-file "$pki/gossip.key" >"$OUT/agent.log" 2>&1 &
pids+=($!)
export VBATCH_ADDR=https://127.0.0.1:18000 VBATCH_API_KEY=$root VBATCH_CA_CERT=$pki/vbatch-ca.pem
for _ in $(seq 1 150); do
  bin/vbctl agents list 2>/dev/null | grep -q "gpu-host.*alive" && break
  sleep 0.2
done
echo "== GPU telemetry on the coordinator's /metrics (over HTTPS)"
for _ in $(seq 1 60); do
  curl -s --cacert "$pki/vbatch-ca.pem" -H "Authorization: Bearer $root" https://127.0.0.1:18000/metrics >"$OUT/coordinator-metrics.txt"
  grep -q '^vllm_gpu_temperature_celsius' "$OUT/coordinator-metrics.txt" && break
  sleep 0.5
done
grep -E '^vllm_gpu_(temperature|memory|utilization|power)|^vbatch_tls_certificate_expiry|^vbatch_autopilot_healthy' "$OUT/coordinator-metrics.txt" | tee "$OUT/coordinator-gpu-metrics.txt"
echo "== vbctl agents list"
bin/vbctl agents list | tee "$OUT/agents.txt"
curl -s --cacert "$pki/vbatch-ca.pem" -H "Authorization: Bearer $root" https://127.0.0.1:18000/v1/admin/agents >"$OUT/agents.json"
for i in $(seq 1 500); do
  printf '{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"hi %d"}]}}\n' "$i" "$i"
done >"$d/in.jsonl"
echo "== a 500-request batch over mutual TLS"
bin/vbctl batches submit "$d/in.jsonl" --wait --output-dir "$d" 2>&1 | tail -8 | tee "$OUT/batch.txt"
# Agent certificates name the role, not an address: reach the agent under
# its role name, as Prometheus does with server_name.
agent=(--cacert "$pki/vbatch-ca.pem" --connect-to agent.gpucheck.vbatch:18010:127.0.0.1:18010)
curl -s "${agent[@]}" https://agent.gpucheck.vbatch:18010/metrics >"$OUT/agent-metrics.txt"
grep -E '^vllm_gpu_|^vbatch_tls_certificate_expiry' "$OUT/agent-metrics.txt" | head -20
echo "== the agent's online endpoint refuses a caller without a coordinator certificate"
curl -s -o /dev/null -w '%{http_code}\n' "${agent[@]}" -X POST https://agent.gpucheck.vbatch:18010/v1/chat/completions \
  -d '{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}' | tee "$OUT/agent-online-refused.txt"
echo "== done"
