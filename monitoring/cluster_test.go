package monitoring

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// fakeView is a ClusterView over fixed values.
type fakeView struct {
	batches []*vbatchv1.Batch
	agents  []AgentView
	raft    RaftView
	now     time.Time
}

func (v *fakeView) Batches(fn func(*vbatchv1.Batch)) {
	for _, b := range v.batches {
		fn(b)
	}
}
func (v *fakeView) Agents() []AgentView { return v.agents }
func (v *fakeView) Raft() RaftView      { return v.raft }
func (v *fakeView) Now() time.Time      { return v.now }

func chunk(state vbatchv1.ChunkState, start, end, progress int64) *vbatchv1.Chunk {
	return &vbatchv1.Chunk{State: state, StartLine: start, EndLine: end, Progress: progress}
}

func testView() *fakeView {
	pending := vbatchv1.ChunkState_CHUNK_STATE_PENDING
	leased := vbatchv1.ChunkState_CHUNK_STATE_LEASED
	done := vbatchv1.ChunkState_CHUNK_STATE_DONE
	return &fakeView{
		batches: []*vbatchv1.Batch{
			{Id: "batch_a", Model: "m1", Status: vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS,
				RequestCounts: &vbatchv1.RequestCounts{Total: 30, Completed: 8, Failed: 2},
				Usage:         &vbatchv1.Usage{OutputTokens: 100},
				Chunks:        []*vbatchv1.Chunk{chunk(done, 0, 10, 10), chunk(leased, 10, 20, 14), chunk(pending, 20, 30, 20)}},
			{Id: "batch_b", Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING},
			{Id: "batch_c", Model: "m1", Status: vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED,
				InProgressAt: 1000, CompletedAt: 1040,
				RequestCounts: &vbatchv1.RequestCounts{Total: 5, Completed: 5},
				Usage:         &vbatchv1.Usage{OutputTokens: 50}},
			{Id: "batch_d", Status: vbatchv1.BatchStatus_BATCH_STATUS_FAILED, FailedAt: 10},
			// A cancelling batch's chunks are not queued work.
			{Id: "batch_e", Model: "m2", Status: vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING,
				Chunks: []*vbatchv1.Chunk{chunk(pending, 0, 100, 0)}},
		},
		agents: []AgentView{
			{ID: "ag1", Status: WorkerAlive, ReceivedAt: time.Unix(1700000000, 500e6), Telemetry: &vbatchv1.TelemetryRequest{
				AgentId: "ag1",
				Gpus: []*vbatchv1.GPU{{Index: 0, TemperatureCelsius: 65, MemoryUsedBytes: 4 << 30, MemoryTotalBytes: 80 << 30,
					UtilizationPercent: 90, PowerMilliwatts: 250500}},
				Engines: []*vbatchv1.EngineStats{{Model: "m1", Loaded: true, LoadDurationSeconds: 42.5, TokensPerSecond: 1234,
					RequestsRunning: 3, RequestsWaiting: 7}},
			}},
			{ID: "ag2", Status: WorkerDead},
		},
		raft: RaftView{Leader: true, Term: 3, LastIndex: 120, CommitIndex: 119, AppliedIndex: 118, Peers: 3, PeersAlive: 2},
		now:  time.Unix(1700000005, 0),
	}
}

func TestClusterCollectorState(t *testing.T) {
	c := NewClusterCollector(testView())
	want := `
# HELP vllm_batch_jobs_active Batches in a live status (validating, in_progress, finalizing, cancelling).
# TYPE vllm_batch_jobs_active gauge
vllm_batch_jobs_active{status="cancelling"} 1
vllm_batch_jobs_active{status="finalizing"} 0
vllm_batch_jobs_active{status="in_progress"} 1
vllm_batch_jobs_active{status="validating"} 1
# HELP vllm_batch_jobs_total Batches that reached a terminal status (completed, failed, expired, cancelled), from the replicated state.
# TYPE vllm_batch_jobs_total counter
vllm_batch_jobs_total{status="cancelled"} 0
vllm_batch_jobs_total{status="completed"} 1
vllm_batch_jobs_total{status="expired"} 0
vllm_batch_jobs_total{status="failed"} 1
# HELP vllm_queue_depth Requests of in-progress batches not yet run (committed lines excluded).
# TYPE vllm_queue_depth gauge
vllm_queue_depth 16
# HELP vllm_batch_requests_processed_total Batch requests with a committed result, by outcome (completed, failed).
# TYPE vllm_batch_requests_processed_total counter
vllm_batch_requests_processed_total{status="completed"} 13
vllm_batch_requests_processed_total{status="failed"} 2
# HELP vllm_tokens_generated_total Output tokens of committed batch results, by model.
# TYPE vllm_tokens_generated_total counter
vllm_tokens_generated_total{model="m1"} 150
# HELP vllm_worker_status 1 for the agent's current status (alive, draining, dead), 0 for the others.
# TYPE vllm_worker_status gauge
vllm_worker_status{agent="ag1",status="alive"} 1
vllm_worker_status{agent="ag1",status="dead"} 0
vllm_worker_status{agent="ag1",status="draining"} 0
vllm_worker_status{agent="ag2",status="alive"} 0
vllm_worker_status{agent="ag2",status="dead"} 1
vllm_worker_status{agent="ag2",status="draining"} 0
# HELP vllm_worker_heartbeat_timestamp Unix time this coordinator last received the agent's telemetry.
# TYPE vllm_worker_heartbeat_timestamp gauge
vllm_worker_heartbeat_timestamp{agent="ag1"} 1.7000000005e+09
# HELP vllm_gpu_temperature_celsius GPU temperature from the agent's latest telemetry.
# TYPE vllm_gpu_temperature_celsius gauge
vllm_gpu_temperature_celsius{agent="ag1",gpu="0"} 65
# HELP vllm_gpu_memory_used_bytes GPU memory in use from the agent's latest telemetry.
# TYPE vllm_gpu_memory_used_bytes gauge
vllm_gpu_memory_used_bytes{agent="ag1",gpu="0"} 4.294967296e+09
# HELP vllm_gpu_utilization_percent GPU utilization from the agent's latest telemetry.
# TYPE vllm_gpu_utilization_percent gauge
vllm_gpu_utilization_percent{agent="ag1",gpu="0"} 90
# HELP vllm_gpu_power_watts GPU power draw from the agent's latest telemetry.
# TYPE vllm_gpu_power_watts gauge
vllm_gpu_power_watts{agent="ag1",gpu="0"} 250.5
# HELP vllm_model_loaded 1 when the agent's engine has the model loaded and serving.
# TYPE vllm_model_loaded gauge
vllm_model_loaded{agent="ag1",model="m1"} 1
# HELP vllm_model_load_duration_seconds How long the agent's engine took to load the model.
# TYPE vllm_model_load_duration_seconds gauge
vllm_model_load_duration_seconds{agent="ag1",model="m1"} 42.5
# HELP vllm_throughput_tokens_per_second Generation throughput the agent's engine reports.
# TYPE vllm_throughput_tokens_per_second gauge
vllm_throughput_tokens_per_second{agent="ag1",model="m1"} 1234
# HELP vbatch_engine_requests_waiting Requests waiting in the agent's engine.
# TYPE vbatch_engine_requests_waiting gauge
vbatch_engine_requests_waiting{agent="ag1",model="m1"} 7
# HELP vbatch_chunks Chunks of live batches by state (pending, leased, done).
# TYPE vbatch_chunks gauge
vbatch_chunks{status="done"} 1
vbatch_chunks{status="leased"} 1
vbatch_chunks{status="pending"} 2
# HELP vbatch_raft_leader 1 on the raft leader, 0 on the other coordinators.
# TYPE vbatch_raft_leader gauge
vbatch_raft_leader 1
# HELP vbatch_raft_term Current raft term.
# TYPE vbatch_raft_term gauge
vbatch_raft_term 3
# HELP vbatch_raft_commit_index Highest raft index known committed.
# TYPE vbatch_raft_commit_index gauge
vbatch_raft_commit_index 119
# HELP vbatch_raft_applied_index Highest raft index applied to the local state.
# TYPE vbatch_raft_applied_index gauge
vbatch_raft_applied_index 118
# HELP vbatch_raft_peers Voters in the raft configuration.
# TYPE vbatch_raft_peers gauge
vbatch_raft_peers 3
# HELP vbatch_raft_peers_alive Voters of the raft configuration that gossip reports alive.
# TYPE vbatch_raft_peers_alive gauge
vbatch_raft_peers_alive 2
`
	names := []string{"vllm_batch_jobs_active", "vllm_batch_jobs_total", "vllm_queue_depth",
		"vllm_batch_requests_processed_total", "vllm_tokens_generated_total", "vllm_worker_status",
		"vllm_worker_heartbeat_timestamp", "vllm_gpu_temperature_celsius", "vllm_gpu_memory_used_bytes",
		"vllm_gpu_utilization_percent", "vllm_gpu_power_watts", "vllm_model_loaded",
		"vllm_model_load_duration_seconds", "vllm_throughput_tokens_per_second", "vbatch_engine_requests_waiting",
		"vbatch_chunks", "vbatch_raft_leader", "vbatch_raft_term", "vbatch_raft_commit_index",
		"vbatch_raft_applied_index", "vbatch_raft_peers", "vbatch_raft_peers_alive"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}

func TestClusterCollectorBatchDuration(t *testing.T) {
	c := NewClusterCollector(testView())
	want := `
# HELP vllm_batch_processing_duration_seconds Time from in_progress to the terminal status, of batches that ran, by terminal status.
# TYPE vllm_batch_processing_duration_seconds histogram
`
	var b strings.Builder
	b.WriteString(want)
	for _, s := range []string{"cancelled", "completed", "expired", "failed"} {
		n, sum := 0, 0
		if s == "completed" {
			n, sum = 1, 40
		}
		for _, le := range BatchDurationBuckets {
			v := 0
			if le >= 40 {
				v = n
			}
			b.WriteString("vllm_batch_processing_duration_seconds_bucket{status=\"" + s + "\",le=\"" + fmtFloat(le) + "\"} " + itoa(v) + "\n")
		}
		b.WriteString("vllm_batch_processing_duration_seconds_bucket{status=\"" + s + "\",le=\"+Inf\"} " + itoa(n) + "\n")
		b.WriteString("vllm_batch_processing_duration_seconds_sum{status=\"" + s + "\"} " + itoa(sum) + "\n")
		b.WriteString("vllm_batch_processing_duration_seconds_count{status=\"" + s + "\"} " + itoa(n) + "\n")
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(b.String()), "vllm_batch_processing_duration_seconds"); err != nil {
		t.Fatal(err)
	}
}

func TestClusterCollectorLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(NewClusterCollector(testView()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

func TestClusterCollectorDuplicateTelemetryEntries(t *testing.T) {
	v := testView()
	tel := v.agents[0].Telemetry
	tel.Gpus = append(tel.Gpus, tel.Gpus[0])
	tel.Engines = append(tel.Engines, tel.Engines[0])
	// A duplicate series would make Collect fail.
	if n, err := testutil.GatherAndCount(registryWith(t, NewClusterCollector(v)), "vllm_gpu_temperature_celsius", "vllm_model_loaded"); err != nil || n != 2 {
		t.Fatalf("count = %d, %v; want 2 series", n, err)
	}
}

func TestClusterCollectorEmpty(t *testing.T) {
	c := NewClusterCollector(&fakeView{})
	// Every live and terminal status is exported even with no batches.
	if n := testutil.CollectAndCount(c, "vllm_batch_jobs_active"); n != 4 {
		t.Errorf("jobs_active series = %d, want 4", n)
	}
	if v := testutil.ToFloat64(onlyMetric(t, c, "vllm_queue_depth")); v != 0 {
		t.Errorf("queue depth = %v", v)
	}
}

// TestClusterCollectorStaleTelemetry: the GPU and engine figures of a dead
// agent, or of one whose latest report is older than TelemetryMaxAge, are
// left out (a host that died hot would keep the temperature alert firing
// until the agent is forgotten); its status and heartbeat stay.
func TestClusterCollectorStaleTelemetry(t *testing.T) {
	figures := []string{"vllm_gpu_temperature_celsius", "vllm_gpu_memory_used_bytes", "vllm_gpu_memory_total_bytes",
		"vllm_gpu_utilization_percent", "vllm_gpu_power_watts", "vllm_model_loaded", "vllm_model_load_duration_seconds",
		"vllm_throughput_tokens_per_second", "vbatch_engine_requests_running", "vbatch_engine_requests_waiting"}
	count := func(v *fakeView, names ...string) int {
		t.Helper()
		n, err := testutil.GatherAndCount(registryWith(t, NewClusterCollector(v)), names...)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	received := time.Unix(1700000000, 500e6)
	for _, tc := range []struct {
		name   string
		status string
		age    time.Duration
		want   int
	}{
		{"fresh", WorkerAlive, TelemetryMaxAge, len(figures)},
		{"fresh draining", WorkerDraining, time.Second, len(figures)},
		{"stale", WorkerAlive, TelemetryMaxAge + time.Millisecond, 0},
		{"stale draining", WorkerDraining, time.Hour, 0},
		{"dead", WorkerDead, time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := testView()
			v.agents[0].Status = tc.status
			v.agents[0].ReceivedAt = received
			v.now = received.Add(tc.age)
			if n := count(v, figures...); n != tc.want {
				t.Errorf("GPU and engine series = %d, want %d", n, tc.want)
			}
			// Both agents keep their status series, and ag1 its heartbeat.
			if n := count(v, "vllm_worker_status"); n != 2*len(workerStates) {
				t.Errorf("status series = %d, want %d", n, 2*len(workerStates))
			}
			if n := count(v, "vllm_worker_heartbeat_timestamp"); n != 1 {
				t.Errorf("heartbeat series = %d, want 1", n)
			}
		})
	}
}
