#!/usr/bin/env bash
# Idempotent host setup for Alpha's eBPF sensor (bcc), for a fresh Debian 12 as root:
#   1. Debian packages bpfcc-tools python3-bpfcc linux-headers-amd64, only those missing;
#   2. kernel headers where bcc looks for them: /lib/modules/$(uname -r)/build (and source);
#      when the running kernel has none (a cloud/VM kernel), link Debian's headers there;
#   3. tracefs mounted at /sys/kernel/tracing (bcc reads tracepoint formats there; it does not
#      need debugfs when tracefs is at that path);
#   4. bcc's Python package, and only it, exposed to the project venv by a symlink in
#      site-packages (a .pth to dist-packages would leak every Debian Python package).
# Usage: tools/setup-bpf.sh [VENV_DIR]   (default: .venv beside this repository's root)
# Prints one line per step saying what it did or found. Run it before the tests on every boot:
# it is idempotent and fast, and a reboot unmounts tracefs. Not root: steps 1-3 are only
# checked (the eBPF sensor and tests/bpf need root anyway), step 4 is done if it can be.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv}"
release="$(uname -r)"
modules="/lib/modules/$release"
tracefs="/sys/kernel/tracing"
bcc_src="/usr/lib/python3/dist-packages/bcc"

say() { echo "setup-bpf: $*"; }
die() { echo "setup-bpf: error: $*" >&2; exit 1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

root=0
[ "$(id -u)" -eq 0 ] && root=1
skip() { say "not root: $* (run as root to fix)"; }

# 1. Packages.
need=()
for pkg in bpfcc-tools python3-bpfcc linux-headers-amd64; do
    have_pkg "$pkg" || need+=("$pkg")
done
if ((${#need[@]})) && ((!root)); then
    skip "missing packages ${need[*]}"
elif ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    say "packages present: bpfcc-tools python3-bpfcc linux-headers-amd64"
fi

# 2. Kernel headers. The metapackage depends on exactly one versioned headers package, e.g.
# linux-headers-6.1.0-56-amd64, which ships /lib/modules/6.1.0-56-amd64/{build,source}.
if [ -e "$modules/build/include" ]; then
    say "kernel headers present: $modules/build -> $(readlink -f "$modules/build")"
elif ((!root)); then
    skip "no kernel headers at $modules/build"
elif ! have_pkg linux-headers-amd64; then
    die "linux-headers-amd64 is not installed"
else
    hdr_pkg="$(dpkg-query -W -f='${Depends}' linux-headers-amd64 | grep -o 'linux-headers-[^ ,]*' | head -n1)"
    hdr_ver="${hdr_pkg#linux-headers-}"
    hdr_dir="/lib/modules/$hdr_ver"
    [ -n "$hdr_ver" ] && [ -e "$hdr_dir/build/include" ] ||
        die "cannot find the headers of $hdr_pkg under $hdr_dir"
    if [ -L "$modules" ] || [ ! -e "$modules" ]; then
        # No modules dir for this kernel (or a dangling link): the whole dir is the headers one.
        ln -sfn "$hdr_dir" "$modules"
        say "linked $modules -> $hdr_dir (running kernel has no headers; using $hdr_pkg)"
    else
        # A real modules dir without headers: add build/source links inside it.
        ln -sfn "$(readlink -f "$hdr_dir/build")" "$modules/build"
        if [ -e "$hdr_dir/source" ]; then
            ln -sfn "$(readlink -f "$hdr_dir/source")" "$modules/source"
        fi
        say "linked $modules/build (and source) to the headers of $hdr_pkg"
    fi
fi

# 3. tracefs.
# /proc/mounts, not the directory: tracefs is readable by root only.
if grep -qs "^[^ ]* $tracefs tracefs " /proc/mounts; then
    say "tracefs mounted at $tracefs"
elif ((!root)); then
    skip "tracefs not mounted at $tracefs"
else
    mkdir -p "$tracefs"
    mount -t tracefs tracefs "$tracefs"
    say "mounted tracefs at $tracefs"
fi

# 4. bcc in the venv.
if [ ! -d "$bcc_src" ]; then
    ((root)) && die "$bcc_src missing although python3-bpfcc is installed"
    skip "bcc not installed, not exposed to the venv"
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    say "no venv at $venv yet: skipped exposing bcc (rerun after the venv exists)"
    exit 0
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "$(readlink -f "$site/bcc" 2>/dev/null || true)" = "$bcc_src" ]; then
    say "bcc already linked into $site"
else
    rm -rf "${site:?}/bcc"
    ln -s "$bcc_src" "$site/bcc"
    say "linked $site/bcc -> $bcc_src"
fi
version="$("$venv/bin/python" -c 'import bcc; print(bcc.__version__)')" ||
    die "import bcc fails in $venv/bin/python"
say "import bcc works in $venv/bin/python (bcc $version)"
