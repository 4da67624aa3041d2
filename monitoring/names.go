package monitoring

// Label names. Metrics carry only these labels: never a batch or request
// id, whose values are unbounded.
const (
	LabelStatus   = "status"
	LabelEndpoint = "endpoint"
	LabelMethod   = "method"
	LabelCode     = "code"
	LabelModel    = "model"
	LabelAgent    = "agent"
	LabelGPU      = "gpu"
	LabelType     = "type"
)

// Worker states, the status label of vllm_worker_status.
const (
	WorkerAlive    = "alive"
	WorkerDraining = "draining"
	WorkerDead     = "dead"
)

// workerStates lists every worker state so that each agent exports the
// whole one-hot set and a dashboard never sees a state vanish.
var workerStates = []string{WorkerAlive, WorkerDraining, WorkerDead}

// Chunk outcomes the leader observes, the status label of
// vllm_chunks_processed_total on coordinators.
const (
	ChunkCompleted = "completed"
	// ChunkRequeued is a lease that ended without finishing its chunk
	// (expired, released, agent gone): the chunk went back to pending.
	ChunkRequeued = "requeued"
)

// Request outcomes, the status label of vllm_batch_requests_processed_total.
const (
	RequestCompleted = "completed"
	RequestFailed    = "failed"
)
