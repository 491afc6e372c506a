#!/usr/bin/env bash
# Install the Debian 12 packages that `make` needs, only those missing; apt-get update runs once,
# and only when something must be installed. Later components add their packages here.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Node.js runs buf (from the npm registry) and the non-Python client tests. Any install will do;
# Debian's nodejs+npm when there is none (a NodeSource nodejs already ships npm).
if ! have_cmd node; then need+=(nodejs); fi
if ! have_cmd npm; then need+=(npm); fi
have_cmd git || need+=(git)
have_cmd make || need+=(make)
# The venv is made with python3 -m venv, which Debian splits into python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
have_pkg ca-certificates || need+=(ca-certificates)
# Alpha's authentication tests run a real OpenSSH server on 127.0.0.1 and log in with sshpass.
for pkg in openssh-server openssh-client sshpass; do
    have_pkg "$pkg" || need+=("$pkg")
done
# The transport tests probe with openssl s_client and check deploy/nftables-qsc.nft with nft -c.
have_cmd openssl || need+=(openssl)
# The n8n the playbook tests run (tools/n8n) builds sqlite3's native module when its prebuilt
# binary cannot be downloaded (package registries only): node-gyp needs a compiler and make.
have_cmd g++ || need+=(g++)
have_cmd nft || need+=(nftables)
# Alpha's attack-class tests grant file capabilities, make namespaces and backdate files with
# the real tools: setcap, unshare/nsenter, ip netns, touch.
have_cmd setcap || need+=(libcap2-bin)
have_cmd unshare || need+=(util-linux)
have_cmd ip || need+=(iproute2)
# docs/integrator-guide.md's snippets (tests/integration/test_integrator_snippets.py) generate
# clients with protoc and build the Go one offline from Debian's Go packages (GOPATH mode);
# golang-google-grpc-dev accepts either golang/protobuf, and only 1.5 reads generated APIv2 code.
for pkg in golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
    golang-github-golang-protobuf-1-5-dev; do
    have_pkg "$pkg" || need+=("$pkg")
done
# The deployment tests check deploy/systemd/*.service with systemd-analyze verify and security.
have_cmd systemd-analyze || need+=(systemd)

if ((${#need[@]} == 0)); then
    echo "system packages: all present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: these Debian packages are missing and installing them needs root: ${need[*]}" >&2
    exit 1
fi
echo "system packages: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
