package deploy

import "fmt"

// Coordinators export the same state figures (max across them), and count
// events they saw themselves (sum across them); see docs/monitoring.md.

func quantiles(metric, sel string, qs ...float64) []target {
	var out []target
	for _, v := range qs {
		out = append(out, q(fmt.Sprintf(`histogram_quantile(%g, sum by (le) (rate(%s_bucket{%s}[$__rate_interval])))`, v, metric, sel),
			fmt.Sprintf("P%g", v*100)))
	}
	return out
}

func heat(metric, sel string) target {
	return target{expr: fmt.Sprintf(`sum by (le) (increase(%s_bucket{%s}[$__rate_interval]))`, metric, sel), legend: "{{le}}", heatmap: true}
}

var (
	green  = threshold{color: "green"}
	yellow = func(v float64) threshold { return threshold{value: f(v), color: "yellow"} }
	red    = func(v float64) threshold { return threshold{value: f(v), color: "red"} }
)

func batchProcessing() dashboard {
	return dashboard{
		uid: "vbatch-batch-processing", title: "vbatch / Batch Processing", tags: []string{"vbatch"},
		description: "Batch lifecycle, queue and throughput.",
		panels: []panel{
			{title: "Batch jobs by status", typ: "timeseries", w: 12, h: 8, stacked: true,
				targets: []target{q(`max by (status) (vllm_batch_jobs_active{`+coord+`})`, "{{status}}")}},
			{title: "Queue depth", typ: "gauge", w: 6, h: 8, unit: "short", description: "Requests of in-progress batches not yet run.",
				thresholds: []threshold{green, yellow(10000), red(100000)},
				targets:    []target{q(`max(vllm_queue_depth{`+coord+`})`, "queued")}},
			{title: "Success rate", typ: "stat", w: 6, h: 4, unit: "percentunit", description: "Completed batches among batches that ended.",
				thresholds: []threshold{{color: "red"}, yellow(0.9), threshold{value: f(0.99), color: "green"}},
				targets:    []target{q(`max(vllm_batch_jobs_total{`+coord+`,status="completed"}) / sum(max by (status) (vllm_batch_jobs_total{`+coord+`}))`, "success")}},
			{title: "Total batches processed", typ: "stat", w: 6, h: 4, unit: "short",
				thresholds: []threshold{{color: "blue"}},
				targets:    []target{q(`sum(max by (status) (vllm_batch_jobs_total{`+coord+`}))`, "batches")}},
			{title: "Request throughput", typ: "timeseries", w: 12, h: 8, unit: "reqps",
				targets: []target{q(`max by (status) (rate(vllm_batch_requests_processed_total{`+coord+`}[$__rate_interval]))`, "{{status}}")}},
			{title: "Batch processing duration", typ: "timeseries", w: 12, h: 8, unit: "s", description: "in_progress to completed.",
				targets: []target{
					q(`histogram_quantile(0.5, max by (le) (rate(vllm_batch_processing_duration_seconds_bucket{`+coord+`,status="completed"}[$__rate_interval])))`, "P50"),
					q(`histogram_quantile(0.95, max by (le) (rate(vllm_batch_processing_duration_seconds_bucket{`+coord+`,status="completed"}[$__rate_interval])))`, "P95"),
				}},
			{title: "Chunk processing duration", typ: "timeseries", w: 12, h: 8, unit: "s", description: "Lease grant to chunk done.",
				targets: quantiles("vllm_chunk_processing_duration_seconds", coord, 0.5, 0.95)},
			{title: "Chunk size distribution", typ: "heatmap", w: 12, h: 8, unit: "short",
				targets: []target{heat("vllm_chunk_size", coord)}},
			{title: "Requests processed", typ: "timeseries", w: 12, h: 8, unit: "short", stacked: true,
				targets: []target{q(`max by (status) (increase(vllm_batch_requests_processed_total{`+coord+`}[$__rate_interval]))`, "{{status}}")}},
			{title: "Queue wait time (P95)", typ: "gauge", w: 12, h: 8, unit: "s", description: "How long chunks wait pending before an agent leases them.",
				thresholds: []threshold{green, yellow(60), red(600)},
				targets:    []target{q(`histogram_quantile(0.95, sum by (le) (rate(vllm_queue_wait_time_seconds_bucket{`+coord+`}[5m])))`, "P95")}},
		},
	}
}

func systemHealth() dashboard {
	return dashboard{
		uid: "vbatch-system-health", title: "vbatch / System Health", tags: []string{"vbatch"},
		description: "API traffic, latency, errors and worker health.",
		panels: []panel{
			{title: "API request rate", typ: "timeseries", w: 12, h: 8, unit: "reqps",
				targets: []target{q(`sum by (endpoint) (rate(vllm_request_total{`+coord+`}[$__rate_interval]))`, "{{endpoint}}")}},
			{title: "API response time", typ: "timeseries", w: 12, h: 8, unit: "s",
				targets: quantiles("vllm_request_duration_seconds", coord, 0.5, 0.95, 0.99)},
			{title: "Error rate", typ: "timeseries", w: 8, h: 8, unit: "short",
				targets: []target{q(`sum by (type) (rate(vllm_errors_total{`+coord+`}[$__rate_interval]))`, "{{type}}")}},
			{title: "HTTP status codes", typ: "piechart", w: 8, h: 8,
				targets: []target{q(`sum by (code) (increase(vllm_request_total{`+coord+`}[$__range]))`, "{{code}}")}},
			{title: "Worker status", typ: "stat", w: 8, h: 8, description: "Agents by their liveness in gossip.",
				thresholds: []threshold{{color: "red"}, threshold{value: f(1), color: "green"}},
				mappings: []any{map[string]any{"type": "value", "options": map[string]any{
					"0": map[string]any{"text": "down", "color": "red"}, "1": map[string]any{"text": "alive", "color": "green"}}}},
				targets: []target{q(`max by (agent) (vllm_worker_status{`+coord+`,status="alive"})`, "{{agent}}")}},
			{title: "Worker heartbeat age", typ: "gauge", w: 8, h: 8, unit: "s", description: "Time since a coordinator last had the agent's telemetry.",
				thresholds: []threshold{green, yellow(30), red(60)},
				targets:    []target{q(`time() - max by (agent) (vllm_worker_heartbeat_timestamp{`+coord+`})`, "{{agent}}")}},
			{title: "Files uploaded", typ: "stat", w: 8, h: 4, unit: "short",
				thresholds: []threshold{{color: "blue"}},
				targets:    []target{q(`sum(increase(vllm_files_uploaded_total{`+coord+`}[$__range]))`, "files")}},
			{title: "Files stored", typ: "stat", w: 8, h: 4, unit: "bytes", description: "Bytes uploaded in the time range.",
				thresholds: []threshold{{color: "blue"}},
				targets:    []target{q(`sum(increase(vllm_files_bytes_uploaded_total{`+coord+`}[$__range]))`, "bytes")}},
			{title: "Errors by type", typ: "bargauge", w: 12, h: 8, unit: "short",
				thresholds: []threshold{{color: "orange"}},
				targets:    []target{q(`sum by (type) (increase(vllm_errors_total{`+coord+`}[$__range]))`, "{{type}}")}},
			{title: "Request latency heatmap", typ: "heatmap", w: 12, h: 8, unit: "s",
				targets: []target{heat("vllm_request_duration_seconds", coord)}},
			{title: "Requests by endpoint", typ: "bargauge", w: 12, h: 8, unit: "short",
				thresholds: []threshold{{color: "blue"}},
				targets:    []target{q(`sum by (endpoint) (increase(vllm_request_total{`+coord+`}[$__range]))`, "{{endpoint}}")}},
			{title: "Average request duration by endpoint", typ: "timeseries", w: 12, h: 8, unit: "s",
				targets: []target{q(`sum by (endpoint) (rate(vllm_request_duration_seconds_sum{`+coord+`}[$__rate_interval])) / sum by (endpoint) (rate(vllm_request_duration_seconds_count{`+coord+`}[$__rate_interval]))`, "{{endpoint}}")}},
		},
	}
}

func gpuInference() dashboard {
	byGPU := func(m string) string { return `max by (agent, gpu) (` + m + `{` + coord + `})` }
	return dashboard{
		uid: "vbatch-gpu-inference", title: "vbatch / GPU & Inference", tags: []string{"vbatch"},
		description: "GPU health from agent telemetry, engine throughput and inference latency.",
		panels: []panel{
			{title: "GPU temperature", typ: "gauge", w: 6, h: 8, unit: "celsius", min: f(0), max: f(100),
				thresholds: []threshold{green, yellow(75), red(85)},
				targets:    []target{q(byGPU("vllm_gpu_temperature_celsius"), "{{agent}} gpu{{gpu}}")}},
			{title: "GPU memory usage", typ: "gauge", w: 6, h: 8, unit: "percentunit", min: f(0), max: f(1),
				thresholds: []threshold{green, yellow(0.92), red(0.97)},
				targets:    []target{q(byGPU("vllm_gpu_memory_used_bytes")+" / "+byGPU("vllm_gpu_memory_total_bytes"), "{{agent}} gpu{{gpu}}")}},
			{title: "GPU utilization", typ: "gauge", w: 6, h: 8, unit: "percent", min: f(0), max: f(100),
				thresholds: []threshold{{color: "blue"}, threshold{value: f(50), color: "green"}},
				targets:    []target{q(byGPU("vllm_gpu_utilization_percent"), "{{agent}} gpu{{gpu}}")}},
			{title: "Model loaded", typ: "stat", w: 6, h: 8,
				thresholds: []threshold{{color: "red"}, threshold{value: f(1), color: "green"}},
				mappings: []any{map[string]any{"type": "value", "options": map[string]any{
					"0": map[string]any{"text": "not loaded", "color": "red"}, "1": map[string]any{"text": "loaded", "color": "green"}}}},
				targets: []target{q(`max by (agent, model) (vllm_model_loaded{`+coord+`})`, "{{agent}} {{model}}")}},
			{title: "GPU memory over time", typ: "timeseries", w: 12, h: 8, unit: "bytes",
				targets: []target{q(byGPU("vllm_gpu_memory_used_bytes"), "{{agent}} gpu{{gpu}} used"), q(byGPU("vllm_gpu_memory_total_bytes"), "{{agent}} gpu{{gpu}} total")}},
			{title: "GPU temperature over time", typ: "timeseries", w: 12, h: 8, unit: "celsius",
				targets: []target{q(byGPU("vllm_gpu_temperature_celsius"), "{{agent}} gpu{{gpu}}")}},
			{title: "Inference throughput", typ: "timeseries", w: 12, h: 8, unit: "short", description: "Tokens per second the engines report.",
				targets: []target{q(`max by (agent, model) (vllm_throughput_tokens_per_second{`+coord+`})`, "{{agent}} {{model}}")}},
			{title: "Tokens generated", typ: "stat", w: 6, h: 8, unit: "short",
				thresholds: []threshold{{color: "blue"}},
				targets:    []target{q(`sum(max by (model) (vllm_tokens_generated_total{`+coord+`}))`, "tokens")}},
			{title: "Token generation rate", typ: "stat", w: 6, h: 8, unit: "short", description: "Output tokens per second of committed results.",
				thresholds: []threshold{{color: "blue"}},
				targets:    []target{q(`sum(max by (model) (rate(vllm_tokens_generated_total{`+coord+`}[5m])))`, "tokens/s")}},
			{title: "Inference duration", typ: "timeseries", w: 12, h: 8, unit: "s", description: "One engine request, measured by the agents.",
				targets: quantiles("vllm_inference_duration_seconds", agent, 0.5, 0.95)},
			{title: "Model load duration", typ: "bargauge", w: 6, h: 8, unit: "s",
				thresholds: []threshold{green, yellow(300), red(900)},
				targets:    []target{q(`max by (agent, model) (vllm_model_load_duration_seconds{`+coord+`})`, "{{agent}} {{model}}")}},
			{title: "Chunks processed", typ: "timeseries", w: 6, h: 8, unit: "short", stacked: true, description: "Completed vs requeued (lease lost) chunks.",
				targets: []target{q(`sum by (status) (increase(vllm_chunks_processed_total{`+coord+`}[$__rate_interval]))`, "{{status}}")}},
		},
	}
}

func cluster() dashboard {
	return dashboard{
		uid: "vbatch-cluster", title: "vbatch / Cluster", tags: []string{"vbatch"},
		description: "Raft, coordinators and agents.",
		panels: []panel{
			{title: "Raft leader", typ: "stat", w: 6, h: 4,
				thresholds: []threshold{{color: "text"}, threshold{value: f(1), color: "green"}},
				targets:    []target{q(`max by (instance) (vbatch_raft_leader{`+coord+`})`, "{{instance}}")}},
			{title: "Raft term", typ: "stat", w: 6, h: 4, thresholds: []threshold{{color: "blue"}},
				targets: []target{q(`max(vbatch_raft_term{`+coord+`})`, "term")}},
			{title: "Voters alive", typ: "stat", w: 6, h: 4, thresholds: []threshold{{color: "blue"}},
				targets: []target{q(`min(vbatch_raft_peers_alive{`+coord+`})`, "alive"), q(`max(vbatch_raft_peers{`+coord+`})`, "voters")}},
			{title: "Coordinators up", typ: "stat", w: 6, h: 4,
				thresholds: []threshold{{color: "red"}, threshold{value: f(1), color: "green"}},
				targets:    []target{q(`up{`+coord+`}`, "{{instance}}")}},
			{title: "Raft commit and applied index", typ: "timeseries", w: 12, h: 8, unit: "short",
				targets: []target{q(`vbatch_raft_commit_index{`+coord+`}`, "{{instance}} commit"), q(`vbatch_raft_applied_index{`+coord+`}`, "{{instance}} applied")}},
			{title: "Apply lag", typ: "timeseries", w: 12, h: 8, unit: "short", description: "Committed entries not yet applied, per coordinator.",
				targets: []target{q(`vbatch_raft_last_index{`+coord+`} - vbatch_raft_applied_index{`+coord+`}`, "{{instance}}")}},
			{title: "Raft apply latency", typ: "timeseries", w: 12, h: 8, unit: "s", description: "Propose to commit and apply, on the leader.",
				targets: quantiles("vbatch_raft_apply_duration_seconds", coord, 0.5, 0.99)},
			{title: "Agents by status", typ: "timeseries", w: 12, h: 8, unit: "short", stacked: true,
				targets: []target{q(`sum by (status) (min by (agent, status) (vllm_worker_status{`+coord+`}))`, "{{status}}")}},
			{title: "Chunks of live batches", typ: "timeseries", w: 12, h: 8, unit: "short", stacked: true,
				targets: []target{q(`max by (status) (vbatch_chunks{`+coord+`})`, "{{status}}")}},
			{title: "Engine queue", typ: "timeseries", w: 12, h: 8, unit: "short",
				targets: []target{q(`max by (agent) (vbatch_engine_requests_running{`+coord+`})`, "{{agent}} running"), q(`max by (agent) (vbatch_engine_requests_waiting{`+coord+`})`, "{{agent}} waiting")}},
			{title: "Leases held by agent", typ: "timeseries", w: 12, h: 8, unit: "short",
				targets: []target{q(`vbatch_agent_leases_held{`+agent+`}`, "{{instance}}")}},
			{title: "Stale results refused", typ: "timeseries", w: 12, h: 8, unit: "short", description: "Parts refused for a stale fencing token: agents that lost a lease kept working.",
				targets: []target{q(`sum(rate(vbatch_stale_results_refused_total{`+coord+`}[$__rate_interval]))`, "refused/s")}},
			{title: "Blob store", typ: "timeseries", w: 12, h: 8, unit: "bytes", description: "Bytes of file and result blobs each coordinator holds (its own copies), measured every ten repair passes (5 minutes by default).",
				targets: []target{q(`vbatch_blob_stored_bytes{`+coord+`}`, "{{instance}}")}},
			{title: "Blob copies missing and corrupt", typ: "timeseries", w: 12, h: 8, unit: "short", description: "Referenced blobs a coordinator still lacks after its last repair pass, and stored copies found corrupt (on a read or the scrub) and quarantined.",
				targets: []target{q(`vbatch_blobs_missing{`+coord+`}`, "{{instance}} missing"), q(`increase(vbatch_blob_corrupt_total{`+coord+`}[$__rate_interval])`, "{{instance}} corrupt")}},
		},
	}
}
