#!/bin/sh
# Generate QSC clients with protoc, from the root of a checkout of the QSC repository.
# OUT is where the code goes (default: gen). Needs: grpcio-tools (pip) for Python; Debian 12's
# protobuf-compiler, protoc-gen-go and protoc-gen-go-grpc for Go; @grpc/proto-loader (npm) for
# TypeScript types.
set -eu
OUT=${OUT:-gen}
FILES=$(cd proto && find qsc -name '*.proto' | sort)

# Python: grpcio-tools bundles protoc and the gRPC plugin. The .proto files' packages become
# Python packages (qsc.cortex.v1, ...); mark each directory a regular package.
mkdir -p "$OUT/python"
python3 -m grpc_tools.protoc -I proto --python_out="$OUT/python" --pyi_out="$OUT/python" \
    --grpc_python_out="$OUT/python" $FILES
find "$OUT/python/qsc" -type d -exec touch {}/__init__.py \;

# Go: the .proto files set no go_package, so map each file to an import path of your own
# (here example.com/soar/gen/qsc/<area>/v1, Go package <area>v1).
GO_PREFIX=example.com/soar/gen
GO_OPTS=""
for f in $FILES; do
    dir=$(dirname "$f")
    pkg=$(echo "${dir#qsc/}" | tr -d /)
    GO_OPTS="$GO_OPTS --go_opt=M$f=$GO_PREFIX/$dir;$pkg --go-grpc_opt=M$f=$GO_PREFIX/$dir;$pkg"
done
mkdir -p "$OUT/go"
# shellcheck disable=SC2086 # GO_OPTS and FILES are lists of words
protoc -I proto --go_out="$OUT/go" --go_opt=paths=source_relative \
    --go-grpc_out="$OUT/go" --go-grpc_opt=paths=source_relative $GO_OPTS $FILES

# TypeScript: types for @grpc/grpc-js, matching how @grpc/proto-loader loads the files at run
# time (the same options as the Node.js client below).
mkdir -p "$OUT/ts"
proto-loader-gen-types --grpcLib=@grpc/grpc-js --outDir="$OUT/ts" -I proto \
    --keepCase --longs=String --enums=String --defaults --oneofs \
    qsc/cortex/v1/cortex_service.proto
