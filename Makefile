# timerd build, test and tooling. `make help` lists the targets.

SHELL         := bash
.SHELLFLAGS   := -eu -o pipefail -c

GO        ?= go
TOOLS     := $(GO) tool -modfile=tools/go.mod
# Packages that own goroutines run their tests again under the race
# detector. The wheel, ring and api packages start none.
# The chaos package's fault scenarios are skipped without TIMERD_CHAOS=1,
# so they cost only their build here (and the verdict's unit tests).
RACE_PKGS ?= ./store/ ./shard/ ./node/ ./cluster/ ./server/ ./client/ ./bench/ ./cmd/... ./internal/redistest/ ./internal/clustertest/ ./chaos/
# The bench peers that need dependencies timerctl must not link (asynq;
# redis-raw, which encodes records with timerd's store) are a module of
# their own.
PEERS     := bench/peers
BENCH     ?= .
# The shard benchmarks (which start their own redis-server) run a fixed
# number of timers: Go's ramp from b.N=1 would start and delete a Redis
# server per step, and the disk traffic of that skews the figures.
DURABLE_N ?= 300000x
BENCHTIME ?= 1s
COUNT     ?= 1
FUZZTIME  ?= 30s
SUITE     ?= 1
# make chaos runs every fault scenario SEEDS times, each with a random
# seed; a scenario takes under a minute, so the bound grows with SEEDS.
SEEDS     ?= 1

.PHONY: help build run cluster test chaos race bench bench-cluster fuzz lint proto proto-check tidy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## compile every package and put timerd, timerctl and timerd-benchpeer in bin/
	$(GO) build ./...
	$(GO) build -o bin/ ./cmd/...
	cd $(PEERS) && $(GO) build -o ../../bin/timerd-benchpeer .

run: build ## build, then run bin/timerd on the embedded store in ./timerd-data (gRPC 127.0.0.1:7070, HTTP 127.0.0.1:7071)
	bin/timerd

cluster: build ## build, then run a redis-server (AOF, fsync every second) and three timerd nodes on loopback (gRPC 7111, 7121, 7131; BASE=free picks free ports) until Ctrl-C: tools/cluster.sh (KEEP=1 keeps data and logs)
	BIN=bin bash tools/cluster.sh

test: ## run every test once (the peers' module too), then the race detector on packages that own goroutines
	$(GO) test -count=1 ./...
	cd $(PEERS) && $(GO) test -count=1 ./...
	@if [ -n "$(RACE_PKGS)" ]; then $(GO) test -race -count=1 $(RACE_PKGS); fi

chaos: ## the fault scenarios of docs/RELIABILITY.md over real timerd and redis-server processes, each with SEEDS random seeds (default 1); prints a verdict line per run (TIMERD_CHAOS_SEED=n replays one seed, TIMERD_CHAOS_SCENARIOS=regexp picks scenarios)
	TIMERD_CHAOS=1 TIMERD_CHAOS_SEEDS=$(SEEDS) $(GO) test -count=1 -timeout $$((10 + 15 * $(SEEDS)))m -v -run '^(TestChaos|TestClusterControls)$$' ./chaos/

bench: build ## run the Go benchmarks beside their peers and print the ratios, then the bench-suite pass against a timerd it starts (BENCH, BENCHTIME, DURABLE_N, COUNT; SUITE=0 skips the suite)
	@out="$$(mktemp)"; trap 'rm -f "$$out"' EXIT; \
	  bench() { $(GO) test -run '^$$' -benchmem -timeout 60m -count $(COUNT) "$$@" | tee -a "$$out"; }; \
	  bench -bench '$(BENCH)' -benchtime $(BENCHTIME) ./wheel ./store && \
	  bench -bench 'Schedule|PipelineRaw|FireAck' -benchtime $(DURABLE_N) ./shard && \
	  bench -bench 'Load1M' -benchtime 1x ./shard && \
	  bench -bench 'Server' -benchtime $(DURABLE_N) ./server && \
	  awk -f tools/benchratio.awk "$$out"
	@if [ "$(SUITE)" != 0 ]; then BIN=bin bash bench/suite/run.sh; fi

bench-cluster: build ## measure one node against a cluster of three on one Redis (schedule and fire, as ratios), then failover (a kill -9) and recovery (a restart) of the three, then three on a 3-master Redis Cluster: bench/suite/cluster.sh (DURATION, FIRE_RATE, FAILOVER_COUNT, RECOVERY_COUNT, REDIS_CLUSTER, ...)
	BIN=bin bash bench/suite/cluster.sh

fuzz: ## run each fuzz target (wheel model, configs, record, lease, epoch, delivery-id and member-meta decoders, spec and every request validator, a stream's delivery accounts, bench config, --batch and --rate, the --redis URL, the token file, the namespace limits file and the gossip key) for FUZZTIME
	for target in wheel:FuzzWheel wheel:FuzzConfig store:FuzzRecord cluster:FuzzDecodeMeta auth:FuzzParse cluster:FuzzDecodeKey shard:FuzzParseDeliveryID shard:FuzzValidateSpec server:FuzzSchedule server:FuzzReschedule server:FuzzCancel server:FuzzGet server:FuzzSubscription server:FuzzAck server:FuzzListDeadLetters server:FuzzReplayDeadLetters server:FuzzSubscriberLifecycle server:FuzzNamespaceLimitsFile store:FuzzParseEpoch store:FuzzParseLeaseValue bench:FuzzConfigValidate bench:FuzzBatchFlag bench:FuzzRateFlag node:FuzzParseRedisURL; do \
	  $(GO) test -run '^$$' -fuzz "^$${target#*:}\$$" -fuzztime $(FUZZTIME) ./$${target%%:*}; \
	done

lint: ## gofmt, go vet and staticcheck
	@out="$$(gofmt -l .)"; \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS) staticcheck ./...
	cd $(PEERS) && $(GO) vet ./... && $(GO) tool -modfile=../../tools/go.mod staticcheck ./...

proto: ## regenerate the Go code of api/timerd/v1 (needs protoc: apt-get install protobuf-compiler)
	bash api/gen.sh

proto-check: ## fail if the committed generated code differs from what make proto writes
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	  cp -r . "$$tmp/src" && (cd "$$tmp/src" && bash api/gen.sh) && \
	  diff -r api/timerd/v1 "$$tmp/src/api/timerd/v1" && echo "generated code is up to date"

tidy: ## fail if go.mod or go.sum of any module would change
	$(GO) mod tidy -diff
	cd tools && $(GO) mod tidy -diff
	cd $(PEERS) && $(GO) mod tidy -diff

clean: ## remove build output
	rm -rf bin
