# timerd build, test and tooling. `make help` lists the targets.

SHELL         := bash
.SHELLFLAGS   := -eu -o pipefail -c

GO        ?= go
TOOLS     := $(GO) tool -modfile=tools/go.mod
# Packages that own goroutines run their tests again under the race
# detector. The wheel, ring and api packages start none.
RACE_PKGS ?= ./store/ ./shard/ ./server/ ./client/ ./cmd/... ./internal/redistest/
BENCH     ?= .
# The shard benchmarks (which start their own redis-server) run a fixed
# number of timers: Go's ramp from b.N=1 would start and delete a Redis
# server per step, and the disk traffic of that skews the figures.
DURABLE_N ?= 300000x
BENCHTIME ?= 1s
COUNT     ?= 1
FUZZTIME  ?= 30s

.PHONY: help build run test race bench fuzz lint proto proto-check tidy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## compile every package (and, once they exist, the binaries into bin/)
	$(GO) build ./...
	@if [ -d cmd ]; then $(GO) build -o bin/ ./cmd/...; fi

run: ## run timerd on the embedded store in ./timerd-data (gRPC 127.0.0.1:7070, HTTP 127.0.0.1:7071)
	$(GO) run ./cmd/timerd

test: ## run every test once, then the race detector on packages that own goroutines
	$(GO) test -count=1 ./...
	@if [ -n "$(RACE_PKGS)" ]; then $(GO) test -race -count=1 $(RACE_PKGS); fi

bench: ## run the benchmarks beside their peers and print the ratios of the medians (BENCH, BENCHTIME, DURABLE_N, COUNT)
	@out="$$(mktemp)"; trap 'rm -f "$$out"' EXIT; \
	  bench() { $(GO) test -run '^$$' -benchmem -timeout 60m -count $(COUNT) "$$@" | tee -a "$$out"; }; \
	  bench -bench '$(BENCH)' -benchtime $(BENCHTIME) ./wheel ./store && \
	  bench -bench 'Schedule|PipelineRaw|FireAck' -benchtime $(DURABLE_N) ./shard && \
	  bench -bench 'Load1M' -benchtime 1x ./shard && \
	  bench -bench 'Server' -benchtime $(DURABLE_N) ./server && \
	  awk -f tools/benchratio.awk "$$out"

fuzz: ## run each fuzz target (wheel model, configs, record and delivery-id decoders, spec and request validation) for FUZZTIME
	for target in wheel:FuzzWheel wheel:FuzzConfig store:FuzzRecord shard:FuzzParseDeliveryID shard:FuzzValidateSpec server:FuzzSchedule; do \
	  $(GO) test -run '^$$' -fuzz "^$${target#*:}\$$" -fuzztime $(FUZZTIME) ./$${target%%:*}; \
	done

lint: ## gofmt, go vet and staticcheck
	@out="$$(gofmt -l .)"; \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS) staticcheck ./...

proto: ## regenerate the Go code of api/timerd/v1 (needs protoc: apt-get install protobuf-compiler)
	bash api/gen.sh

proto-check: ## fail if the committed generated code differs from what make proto writes
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	  cp -r . "$$tmp/src" && (cd "$$tmp/src" && bash api/gen.sh) && \
	  diff -r api/timerd/v1 "$$tmp/src/api/timerd/v1" && echo "generated code is up to date"

tidy: ## fail if go.mod or go.sum of either module would change
	$(GO) mod tidy -diff
	cd tools && $(GO) mod tidy -diff

clean: ## remove build output
	rm -rf bin
