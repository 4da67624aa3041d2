package monitoring

import (
	"slices"
	"testing"
)

func TestMetricNamesCoverDesign(t *testing.T) {
	// The names fixed by the design brief, and the raft figures.
	want := []string{
		"vllm_batch_jobs_active", "vllm_queue_depth", "vllm_batch_jobs_total",
		"vllm_batch_requests_processed_total", "vllm_batch_processing_duration_seconds",
		"vllm_chunk_processing_duration_seconds", "vllm_chunk_size", "vllm_queue_wait_time_seconds",
		"vllm_request_total", "vllm_request_duration_seconds", "vllm_request_errors_total",
		"vllm_worker_status", "vllm_worker_heartbeat_timestamp", "vllm_files_uploaded_total",
		"vllm_files_bytes_uploaded_total", "vllm_errors_total", "vllm_gpu_temperature_celsius",
		"vllm_gpu_memory_used_bytes", "vllm_gpu_memory_total_bytes", "vllm_gpu_utilization_percent",
		"vllm_model_loaded", "vllm_throughput_tokens_per_second", "vllm_tokens_generated_total",
		"vllm_inference_duration_seconds", "vllm_model_load_duration_seconds", "vllm_chunks_processed_total",
		"vbatch_raft_leader", "vbatch_raft_term", "vbatch_raft_last_index", "vbatch_raft_commit_index",
		"vbatch_raft_applied_index", "vbatch_raft_peers", "vbatch_raft_apply_duration_seconds",
	}
	names := MetricNames()
	for _, n := range want {
		if !slices.Contains(names, n) {
			t.Errorf("metric %s is not defined", n)
		}
	}
	hists := HistogramNames()
	for _, n := range []string{"vllm_batch_processing_duration_seconds", "vllm_request_duration_seconds",
		"vllm_chunk_size", "vllm_queue_wait_time_seconds", "vllm_inference_duration_seconds"} {
		if !slices.Contains(hists, n) {
			t.Errorf("%s is not listed as a histogram", n)
		}
	}
	if slices.Contains(hists, "vllm_queue_depth") {
		t.Error("vllm_queue_depth listed as a histogram")
	}
}
