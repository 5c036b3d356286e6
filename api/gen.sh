#!/usr/bin/env bash
# Regenerates the Go code for the timerd.v1 gRPC contract from
# api/timerd/v1/timerd.proto. Run from the repository root (make proto).
#
# Uses protoc from PATH (Debian's protobuf-compiler, well-known types from
# /usr/include) and the protoc-gen-go / protoc-gen-go-grpc versions pinned
# in tools/go.mod, run through `go tool`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# `go tool -n` builds the pinned plugin into the build cache if needed and
# prints its path instead of running it.
gen_go="$(go tool -modfile=tools/go.mod -n protoc-gen-go)"
gen_grpc="$(go tool -modfile=tools/go.mod -n protoc-gen-go-grpc)"

protoc \
	-I api \
	-I /usr/include \
	--plugin=protoc-gen-go="$gen_go" \
	--plugin=protoc-gen-go-grpc="$gen_grpc" \
	--go_out=api --go_opt=paths=source_relative \
	--go-grpc_out=api --go-grpc_opt=paths=source_relative \
	api/timerd/v1/timerd.proto
