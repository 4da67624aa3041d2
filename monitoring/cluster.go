package monitoring

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vbatch/vbatch/fsm"
	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// ClusterView is what a coordinator knows about the whole cluster, read at
// scrape time. Every coordinator holds the same replicated state, so every
// coordinator exports the same cluster-wide figures (up to replication lag):
// dashboards aggregate them with max, not sum.
type ClusterView interface {
	// Batches calls fn for every batch under one consistent read of the
	// replicated state. fn must neither keep nor modify the batch.
	Batches(fn func(*vbatchv1.Batch))
	// Agents lists every registered agent with its liveness and latest
	// telemetry.
	Agents() []AgentView
	// Raft reports this node's raft figures.
	Raft() RaftView
	// Now is the view's clock, the one AgentView.ReceivedAt is read on: a
	// report's age is Now minus ReceivedAt.
	Now() time.Time
}

// TelemetryMaxAge is how old an agent's latest telemetry may be and still
// be exported as its GPU and engine figures: six times the agent's default
// telemetry interval (5 s), which leaves room for a report shared between
// coordinators (stamped with the receiving coordinator's clock) and for
// clock skew under the VbatchClockSkew threshold. An older report no longer
// describes the agent (it stopped, or cannot reach this coordinator), and
// exporting its last values would keep a temperature alert firing on a dead
// host and count a gone engine's throughput as capacity until the agent is
// forgotten. An agent configured to report less often than every 30 s has
// gaps in those series.
const TelemetryMaxAge = 30 * time.Second

// AgentView is one registered agent as a coordinator sees it.
type AgentView struct {
	// ID is the agent's id, the agent label.
	ID string
	// Status is WorkerAlive, WorkerDraining or WorkerDead.
	Status string
	// Telemetry is the latest report this coordinator holds, nil when none.
	Telemetry *vbatchv1.TelemetryRequest
	// ReceivedAt is when Telemetry arrived; zero when there is none.
	ReceivedAt time.Time
}

// RaftView is one coordinator's raft figures.
type RaftView struct {
	// Leader is true on the node that is the raft leader.
	Leader bool
	// Term is the current raft term.
	Term uint64
	// LastIndex is the index of the last entry in the local log.
	LastIndex uint64
	// CommitIndex is the highest index known committed.
	CommitIndex uint64
	// AppliedIndex is raft's applied index: every entry, commands and
	// raft's own (no-ops, barriers, configuration changes).
	AppliedIndex uint64
	// Peers is the number of voters in the raft configuration.
	Peers int
	// PeersAlive is the number of those voters gossip reports alive.
	PeersAlive int
}

// BatchStatusLabel is the OpenAI name of a batch status ("in_progress"),
// the status label of the batch metrics.
func BatchStatusLabel(s vbatchv1.BatchStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BATCH_STATUS_"))
}

// Batch statuses by kind: live ones are exported by vllm_batch_jobs_active,
// terminal ones by vllm_batch_jobs_total; each with every value, zeros
// included, so a series never vanishes.
var (
	liveStatuses = []vbatchv1.BatchStatus{
		vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING,
		vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS,
		vbatchv1.BatchStatus_BATCH_STATUS_FINALIZING,
		vbatchv1.BatchStatus_BATCH_STATUS_CANCELLING,
	}
	terminalStatuses = []vbatchv1.BatchStatus{
		vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED,
		vbatchv1.BatchStatus_BATCH_STATUS_FAILED,
		vbatchv1.BatchStatus_BATCH_STATUS_EXPIRED,
		vbatchv1.BatchStatus_BATCH_STATUS_CANCELLED,
	}
)

// BatchDurationBuckets are the buckets of batch durations: a second to
// two days, the longest completion window a batch is likely to use.
var BatchDurationBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400, 172800}

// ClusterCollector exports the cluster's state, computed from a
// ClusterView at every scrape rather than kept in gauges that drift.
type ClusterCollector struct {
	view ClusterView

	jobsActive, jobsTotal, queueDepth, requestsProcessed, tokensGenerated *prometheus.Desc
	batchDuration, chunks                                                 *prometheus.Desc

	workerStatus, heartbeat                                 *prometheus.Desc
	gpuTemp, gpuMemUsed, gpuMemTotal, gpuUtil, gpuPower     *prometheus.Desc
	modelLoaded, modelLoadDuration, throughput              *prometheus.Desc
	engineRunning, engineWaiting                            *prometheus.Desc
	raftLeader, raftTerm, raftLast, raftCommit, raftApplied *prometheus.Desc
	raftPeers, raftPeersAlive                               *prometheus.Desc
}

// NewClusterCollector returns the collector over view; register it on the
// coordinator's registry.
func NewClusterCollector(view ClusterView) *ClusterCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &ClusterCollector{
		view:              view,
		jobsActive:        d("vllm_batch_jobs_active", "Batches in a live status (validating, in_progress, finalizing, cancelling).", LabelStatus),
		jobsTotal:         d("vllm_batch_jobs_total", "Batches that reached a terminal status (completed, failed, expired, cancelled), from the replicated state.", LabelStatus),
		queueDepth:        d("vllm_queue_depth", "Requests of in-progress batches not yet run (committed lines excluded)."),
		requestsProcessed: d("vllm_batch_requests_processed_total", "Batch requests with a committed result, by outcome (completed, failed).", LabelStatus),
		tokensGenerated:   d("vllm_tokens_generated_total", "Output tokens of committed batch results, by model.", LabelModel),
		batchDuration:     d("vllm_batch_processing_duration_seconds", "Time from in_progress to the terminal status, of batches that ran, by terminal status.", LabelStatus),
		chunks:            d("vbatch_chunks", "Chunks of live batches by state (pending, leased, done).", LabelStatus),
		workerStatus:      d("vllm_worker_status", "1 for the agent's current status (alive, draining, dead), 0 for the others.", LabelAgent, LabelStatus),
		heartbeat:         d("vllm_worker_heartbeat_timestamp", "Unix time this coordinator last received the agent's telemetry.", LabelAgent),
		gpuTemp:           d("vllm_gpu_temperature_celsius", "GPU temperature from the agent's latest telemetry.", LabelAgent, LabelGPU),
		gpuMemUsed:        d("vllm_gpu_memory_used_bytes", "GPU memory in use from the agent's latest telemetry.", LabelAgent, LabelGPU),
		gpuMemTotal:       d("vllm_gpu_memory_total_bytes", "GPU memory size from the agent's latest telemetry.", LabelAgent, LabelGPU),
		gpuUtil:           d("vllm_gpu_utilization_percent", "GPU utilization from the agent's latest telemetry.", LabelAgent, LabelGPU),
		gpuPower:          d("vllm_gpu_power_watts", "GPU power draw from the agent's latest telemetry.", LabelAgent, LabelGPU),
		modelLoaded:       d("vllm_model_loaded", "1 when the agent's engine has the model loaded and serving.", LabelAgent, LabelModel),
		modelLoadDuration: d("vllm_model_load_duration_seconds", "How long the agent's engine took to load the model.", LabelAgent, LabelModel),
		throughput:        d("vllm_throughput_tokens_per_second", "Generation throughput the agent's engine reports.", LabelAgent, LabelModel),
		engineRunning:     d("vbatch_engine_requests_running", "Requests the agent's engine is running.", LabelAgent, LabelModel),
		engineWaiting:     d("vbatch_engine_requests_waiting", "Requests waiting in the agent's engine.", LabelAgent, LabelModel),
		raftLeader:        d("vbatch_raft_leader", "1 on the raft leader, 0 on the other coordinators."),
		raftTerm:          d("vbatch_raft_term", "Current raft term."),
		raftLast:          d("vbatch_raft_last_index", "Index of the last entry in the local raft log."),
		raftCommit:        d("vbatch_raft_commit_index", "Highest raft index known committed."),
		raftApplied:       d("vbatch_raft_applied_index", "Highest raft index applied to the local state."),
		raftPeers:         d("vbatch_raft_peers", "Voters in the raft configuration."),
		raftPeersAlive:    d("vbatch_raft_peers_alive", "Voters of the raft configuration that gossip reports alive."),
	}
}

// Describe sends every descriptor.
func (c *ClusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.jobsActive, c.jobsTotal, c.queueDepth, c.requestsProcessed, c.tokensGenerated, c.batchDuration, c.chunks,
		c.workerStatus, c.heartbeat, c.gpuTemp, c.gpuMemUsed, c.gpuMemTotal, c.gpuUtil, c.gpuPower,
		c.modelLoaded, c.modelLoadDuration, c.throughput, c.engineRunning, c.engineWaiting,
		c.raftLeader, c.raftTerm, c.raftLast, c.raftCommit, c.raftApplied, c.raftPeers, c.raftPeersAlive,
	} {
		ch <- d
	}
}

// Collect computes the figures from the view.
func (c *ClusterCollector) Collect(ch chan<- prometheus.Metric) {
	c.collectBatches(ch)
	c.collectAgents(ch)
	c.collectRaft(ch)
}

// histogram accumulates a constant histogram's buckets.
type histogram struct {
	bounds []float64
	counts []uint64
	count  uint64
	sum    float64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds))}
}

func (h *histogram) observe(v float64) {
	h.count++
	h.sum += v
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i]++
		}
	}
}

func (h *histogram) metric(desc *prometheus.Desc, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.bounds))
	for i, b := range h.bounds {
		buckets[b] = h.counts[i]
	}
	return prometheus.MustNewConstHistogram(desc, h.count, h.sum, buckets, labels...)
}

func (c *ClusterCollector) collectBatches(ch chan<- prometheus.Metric) {
	byStatus := map[vbatchv1.BatchStatus]int{}
	var queue, reqDone, reqFailed int64
	tokens := map[string]int64{}
	durations := map[vbatchv1.BatchStatus]*histogram{}
	for _, s := range terminalStatuses {
		durations[s] = newHistogram(BatchDurationBuckets)
	}
	chunkStates := map[vbatchv1.ChunkState]int{}
	c.view.Batches(func(b *vbatchv1.Batch) {
		byStatus[b.Status]++
		if rc := b.RequestCounts; rc != nil {
			reqDone += rc.Completed
			reqFailed += rc.Failed
		}
		if u := b.Usage; u != nil && u.OutputTokens > 0 {
			tokens[b.Model] += u.OutputTokens
		}
		if h, ok := durations[b.Status]; ok {
			if end := fsm.EndedAt(b); b.InProgressAt > 0 && end >= b.InProgressAt {
				h.observe(float64(end - b.InProgressAt))
			}
			return
		}
		for _, chk := range b.Chunks {
			chunkStates[chk.State]++
			if b.Status == vbatchv1.BatchStatus_BATCH_STATUS_IN_PROGRESS && chk.State != vbatchv1.ChunkState_CHUNK_STATE_DONE {
				queue += max(chk.EndLine-chk.Progress, 0)
			}
		}
	})
	for _, s := range liveStatuses {
		ch <- prometheus.MustNewConstMetric(c.jobsActive, prometheus.GaugeValue, float64(byStatus[s]), BatchStatusLabel(s))
	}
	for _, s := range terminalStatuses {
		ch <- prometheus.MustNewConstMetric(c.jobsTotal, prometheus.CounterValue, float64(byStatus[s]), BatchStatusLabel(s))
		ch <- durations[s].metric(c.batchDuration, BatchStatusLabel(s))
	}
	ch <- prometheus.MustNewConstMetric(c.queueDepth, prometheus.GaugeValue, float64(queue))
	ch <- prometheus.MustNewConstMetric(c.requestsProcessed, prometheus.CounterValue, float64(reqDone), RequestCompleted)
	ch <- prometheus.MustNewConstMetric(c.requestsProcessed, prometheus.CounterValue, float64(reqFailed), RequestFailed)
	for model, n := range tokens {
		ch <- prometheus.MustNewConstMetric(c.tokensGenerated, prometheus.CounterValue, float64(n), model)
	}
	for _, s := range []vbatchv1.ChunkState{vbatchv1.ChunkState_CHUNK_STATE_PENDING, vbatchv1.ChunkState_CHUNK_STATE_LEASED, vbatchv1.ChunkState_CHUNK_STATE_DONE} {
		label := strings.ToLower(strings.TrimPrefix(s.String(), "CHUNK_STATE_"))
		ch <- prometheus.MustNewConstMetric(c.chunks, prometheus.GaugeValue, float64(chunkStates[s]), label)
	}
}

func (c *ClusterCollector) collectAgents(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	now := c.view.Now()
	for _, a := range c.view.Agents() {
		for _, s := range workerStates {
			v := 0.0
			if s == a.Status {
				v = 1
			}
			gauge(c.workerStatus, v, a.ID, s)
		}
		t := a.Telemetry
		if t == nil {
			continue
		}
		// The heartbeat stays: it is how a silent agent is told apart.
		gauge(c.heartbeat, float64(a.ReceivedAt.UnixMilli())/1000, a.ID)
		// A dead agent's or a stale report's figures are its last words,
		// not its state: leave the series out rather than repeat them.
		if a.Status == WorkerDead || now.Sub(a.ReceivedAt) > TelemetryMaxAge {
			continue
		}
		seenGPU := map[uint32]bool{}
		for _, g := range t.Gpus {
			if seenGPU[g.Index] {
				continue
			}
			seenGPU[g.Index] = true
			idx := strconv.FormatUint(uint64(g.Index), 10)
			gauge(c.gpuTemp, float64(g.TemperatureCelsius), a.ID, idx)
			gauge(c.gpuMemUsed, float64(g.MemoryUsedBytes), a.ID, idx)
			gauge(c.gpuMemTotal, float64(g.MemoryTotalBytes), a.ID, idx)
			gauge(c.gpuUtil, float64(g.UtilizationPercent), a.ID, idx)
			gauge(c.gpuPower, float64(g.PowerMilliwatts)/1000, a.ID, idx)
		}
		seen := map[string]bool{}
		for _, e := range t.Engines {
			// One series per (agent, model): a duplicate model in a report
			// would make the scrape fail.
			if seen[e.Model] {
				continue
			}
			seen[e.Model] = true
			loaded := 0.0
			if e.Loaded {
				loaded = 1
			}
			gauge(c.modelLoaded, loaded, a.ID, e.Model)
			gauge(c.modelLoadDuration, e.LoadDurationSeconds, a.ID, e.Model)
			gauge(c.throughput, e.TokensPerSecond, a.ID, e.Model)
			gauge(c.engineRunning, float64(e.RequestsRunning), a.ID, e.Model)
			gauge(c.engineWaiting, float64(e.RequestsWaiting), a.ID, e.Model)
		}
	}
}

func (c *ClusterCollector) collectRaft(ch chan<- prometheus.Metric) {
	r := c.view.Raft()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	leader := 0.0
	if r.Leader {
		leader = 1
	}
	gauge(c.raftLeader, leader)
	gauge(c.raftTerm, float64(r.Term))
	gauge(c.raftLast, float64(r.LastIndex))
	gauge(c.raftCommit, float64(r.CommitIndex))
	gauge(c.raftApplied, float64(r.AppliedIndex))
	gauge(c.raftPeers, float64(r.Peers))
	gauge(c.raftPeersAlive, float64(r.PeersAlive))
}
