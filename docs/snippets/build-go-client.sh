#!/bin/sh
# Build the Go client offline with Debian 12's Go toolchain and packaged libraries
# (apt-get install golang-go golang-google-grpc-dev protoc-gen-go protoc-gen-go-grpc):
# GOPATH mode, the packages' sources under /usr/share/gocode, no module download.
# GEN is generate-protoc.sh's Go output ($OUT/go), SRC the client's directory, BUILD a work
# directory (kept: Go's build cache in it makes the next build fast).
set -eu
: "${GEN:?}" "${SRC:?}" "${BUILD:?}"
mkdir -p "$BUILD/gopath/src/example.com/soar/gen" "$BUILD/gopath/src/example.com/soar/client"
rm -rf "$BUILD/gopath/src/example.com/soar/gen/qsc"
cp -R "$GEN/qsc" "$BUILD/gopath/src/example.com/soar/gen/"
cp "$SRC"/*.go "$BUILD/gopath/src/example.com/soar/client/"
GOPATH="$BUILD/gopath:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOPROXY=off \
    GOCACHE="$BUILD/cache" go build -o "$BUILD/go-client" example.com/soar/client
