# vbatch build, test and tooling. `make test` is what CI runs.
GO ?= go
export CGO_CFLAGS ?= -Wno-deprecated-declarations
GOBIN ?= $(shell $(GO) env GOPATH)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/vbatch/vbatch/internal/version.Version=$(VERSION)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_CONNECT_GO_VERSION := v1.21.1

.PHONY: device-build build test test-unit generate tools lint bench demo clean monitoring-check chaos failover fuzz deadagent stale quiet partitions fuzz-brief test-race

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/vbatch ./cmd/vbatch
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/vbctl ./cmd/vbctl

# device-build writes stripped binaries and the e2e test binary to bin/
# (under the 64 MiB a device run may carry) for scripts/device-bench.sh on
# a lent machine that has no Go.
device-build:
	$(GO) build -ldflags "-s -w $(LDFLAGS)" -o bin/vbatch ./cmd/vbatch
	$(GO) build -ldflags "-s -w $(LDFLAGS)" -o bin/vbctl ./cmd/vbctl
	$(GO) test -c -ldflags "-s -w" -o bin/e2e.test ./e2e/

# monitoring-check runs TestMonitoringLive itself, so the full run skips it.
# Every fuzz target's seed corpus runs with the tests; fuzz-brief then
# fuzzes each target for a couple of seconds beyond its seeds.
test: lint build monitoring-check
	GO=$(GO) ./scripts/gotest.sh -count=1 -timeout 15m -skip '^TestMonitoringLive$$' ./...
	$(MAKE) test-race fuzz-brief

# test-race runs the in-process packages (not e2e, whose binaries are built
# without it) under the race detector.
test-race:
	GO=$(GO) ./scripts/gotest.sh -count=1 -race -timeout 10m ./coordinator/... ./agent/... ./gossip/ ./internal/... ./cli/

test-unit:
	$(GO) test -count=1 -short ./...

tools:
	GOBIN=$(GOBIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_GO_VERSION)
	GOBIN=$(GOBIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

generate:
	cd rpc && PATH=$(GOBIN):$$PATH buf generate

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^rpc/gen/')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./...

demo: build
	./scripts/demo.sh

# fuzz runs every go test -fuzz target for FUZZTIME each (default 30s); the
# seed corpora of the same targets run in every `make test`.
FUZZTIME ?= 30s
fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

fuzz-brief:
	FUZZTIME=2s ./scripts/fuzz.sh

clean:
	rm -rf bin

# monitoring-check validates the shipped Prometheus config, runs the alert
# rules' unit tests and parses every dashboard query, then runs a real
# Prometheus with the shipped rules against a live cluster (e2e
# TestMonitoringLive): every dashboard query must return data and the
# agent-down alert must fire when an agent is killed. It needs promtool and
# prometheus (Debian: apt-get install prometheus) and fails without them.
PROMTOOL ?= promtool
PROMETHEUS ?= prometheus
monitoring-check:
	@command -v $(PROMTOOL) >/dev/null 2>&1 || { echo "monitoring-check: promtool not found; install it (Debian: apt-get install prometheus) or set PROMTOOL=/path/to/promtool" >&2; exit 1; }
	@command -v $(PROMETHEUS) >/dev/null 2>&1 || { echo "monitoring-check: prometheus not found; install it (Debian: apt-get install prometheus) or set PROMETHEUS=/path/to/prometheus" >&2; exit 1; }
	cd deploy/prometheus && $(PROMTOOL) check config prometheus.yml
	cd deploy/prometheus && $(PROMTOOL) test rules tests/*.yml
	VBATCH_PROMTOOL=$$(command -v $(PROMTOOL)) $(GO) test -count=1 ./deploy/ ./monitoring/
	VBATCH_PROMTOOL=$$(command -v $(PROMTOOL)) VBATCH_PROMETHEUS=$$(command -v $(PROMETHEUS)) \
		$(GO) test -count=1 -timeout 5m -run '^TestMonitoringLive$$' ./e2e/

# chaos runs SCHEDULES seeded fault schedules (seeds SEED, SEED+1, ...) of
# CHAOS_WINDOW each against a real cluster under load and prints a table of
# faults, invariant results and timings (e2e TestChaos, docs/reliability.md).
SCHEDULES ?= 1
SEED ?= 1
CHAOS_WINDOW ?= 60s
# A long run takes about 80 s per schedule (window, healing, checks).
CHAOS_TIMEOUT ?= 6h
chaos:
	$(GO) test -count=1 -v -run '^TestChaos$$' -timeout $(CHAOS_TIMEOUT) ./e2e/ -args \
		-chaos.schedules=$(SCHEDULES) -chaos.seed=$(SEED) -chaos.window=$(CHAOS_WINDOW)

# failover measures leader failover (SIGKILL to the first acknowledged
# write) over TRIALS trials (e2e BenchmarkFailover).
TRIALS ?= 30
failover:
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkFailover$$' -benchtime 1x -timeout 30m ./e2e/ -args -failover.trials=$(TRIALS)

# deadagent measures SIGKILL of an agent to its chunks leased again, over
# TRIALS trials; stale runs STALE_TRIALS SIGSTOP/SIGCONT trials of agents
# holding leases past their TTL and checks no stale result was accepted;
# quiet loads both cores for QUIET and counts elections and agent deaths
# (there must be none). Figures go to docs/reliability.md.
STALE_TRIALS ?= 100
QUIET ?= 10m
deadagent:
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkDeadAgent$$' -benchtime 1x -timeout 30m ./e2e/ -args -deadagent.trials=$(TRIALS)

stale:
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkStaleLease$$' -benchtime 1x -timeout 30m ./e2e/ -args -stale.trials=$(STALE_TRIALS)

quiet:
	$(GO) test -count=1 -v -run '^TestQuietUnderLoad$$' -timeout 60m ./e2e/ -args -quiet.duration=$(QUIET)

# partitions runs the network-partition schedule (e2e TestPartitions: every
# node in its own network namespace; needs root and iproute2) with FAULTS
# faults from seed SEED.
FAULTS ?= 25
partitions:
	$(GO) test -count=1 -v -run '^TestPartitions$$' -timeout 60m ./e2e/ -args -partition.faults=$(FAULTS) -partition.seed=$(SEED)
