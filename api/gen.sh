#!/usr/bin/env bash
# Regenerates the Go code for the timerd.v1 gRPC contract from
# api/timerd/v1/timerd.proto. Run from the repository root (make proto).
#
# Uses protoc from PATH (well-known types from /usr/include) and the
# protoc-gen-go / protoc-gen-go-grpc versions pinned in tools/go.mod.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT

go build -modfile=tools/go.mod -o "$bin/" \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc

protoc \
	-I api \
	-I /usr/include \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
	--go_out=api --go_opt=paths=source_relative \
	--go-grpc_out=api --go-grpc_opt=paths=source_relative \
	api/timerd/v1/timerd.proto
