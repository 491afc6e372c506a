"""Alpha's memory: the resident size of a real qsc-alpha with the default configuration, and where
it goes.

Run as root: ``.venv/bin/python tests/bench/bench_alpha_memory.py`` (``make bench``). Not a
test: it prints figures and asserts nothing. About a minute on 2 vCPUs. Goal: RSS < 150 MB.

1. A real `qsc-alpha` (default configuration; own PKI, outbox and auth state in a temporary
   directory, 127.0.0.1 only): VmRSS / RssAnon / RssFile idle after start, and after a light
   workload (execs and watched opens, so the process table, rules and outbox are used). Its
   /proc/PID/smaps grouped by what is mapped (bcc's LLVM/clang, libbcc, the BPF ring buffer,
   native extensions by package, the brk heap, anonymous memory...), the largest mappings, and
   its BPF maps and programs from /proc/PID/fdinfo (kernel memory: not in RSS, except the
   ring buffer's pages, which are mmapped into the process).
2. The same Alpha built in a child Python step by step (`--stages CONFIG`), RSS after each
   step: the interpreter, each group of imports, the Alpha object (rules compiled, outbox
   opened), start (bcc compiles and loads the program, the process table is seeded, the
   sources start), a few seconds of running and the same workload as in 1; with tracemalloc
   (started after the imports; its own overhead subtracted) naming the Python allocations made
   from then on, by file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# The --stages child must start with a bare interpreter: the helpers (grpc, cryptography...) are
# imported only in the parent.
if TYPE_CHECKING or "--stages" not in sys.argv:
    from tests.bench.alpha_bench_common import (
        EXECS_C,
        OPENS_C,
        AlphaProcess,
        Mapping,
        compile_c,
        require_root,
        smaps,
        status_kib,
        write_alpha_config,
    )

NAME = "bench_alpha_memory"
GOAL_MB = 150
MIB = 1024  # KiB per MiB
BPF_MAP_TYPES = {
    1: "hash",
    2: "array",
    3: "prog_array",
    4: "perf_event_array",
    5: "percpu_hash",
    6: "percpu_array",
    7: "stack_trace",
    9: "lru_hash",
    10: "lru_percpu_hash",
    27: "ringbuf",
}


def category(name: str) -> str:
    if "bpf-map" in name or name.startswith("anon_inode:bpf"):
        return "BPF maps mmapped (ring buffer)"
    if "libLLVM" in name or "libclang" in name:
        return "LLVM/clang code+data (bcc's compiler)"
    if "libbcc" in name:
        return "libbcc"
    if "site-packages/" in name:
        package = name.split("site-packages/", 1)[1].split("/", 1)[0]
        package = package.removesuffix(".libs")
        return f"native ext: {package.split('.')[0]}"
    if "python3" in name or "libpython" in name:
        return "CPython + stdlib extensions"
    if ".so" in name:
        return "other shared libraries"
    if name == "[heap]":
        return "[heap] (brk: glibc malloc)"
    if name == "":
        return "anonymous (obmalloc arenas, malloc mmaps, stacks)"
    if name.startswith("["):
        return name
    return "other file mappings"


def breakdown(maps: list[Mapping]) -> None:
    keys = ("Rss", "Pss", "Anonymous", "Private_Dirty", "Shared_Clean")
    groups: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    for m in maps:
        g = groups[category(m.name)]
        for k in keys:
            g[k] += m.fields.get(k, 0)
    total = {k: sum(g[k] for g in groups.values()) for k in keys}
    print(
        f"     {'what (smaps, MiB)':<52} {'Rss':>6} {'Pss':>6} {'Anon':>6} {'PrivDirty':>9} "
        f"{'SharedClean':>11}"
    )
    rows = sorted(groups.items(), key=lambda kv: -kv[1]["Rss"])
    for name, g in [*rows, ("TOTAL", total)]:
        if g["Rss"] < 512 and name != "TOTAL":
            continue
        print(
            f"     {name:<52} {g['Rss'] / MIB:>6.1f} {g['Pss'] / MIB:>6.1f} "
            f"{g['Anonymous'] / MIB:>6.1f} {g['Private_Dirty'] / MIB:>9.1f} "
            f"{g['Shared_Clean'] / MIB:>11.1f}"
        )
    print("     (groups under 0.5 MiB left out)")


def largest(maps: list[Mapping], n: int = 12) -> None:
    by_name: dict[str, int] = defaultdict(int)
    for m in maps:
        by_name[m.name or "(anonymous)"] += m.fields.get("Rss", 0)
    print(f"   the {n} largest mapped objects by Rss (all their mappings together):")
    for name, kib in sorted(by_name.items(), key=lambda kv: -kv[1])[:n]:
        print(f"     {kib / MIB:7.1f} MiB  {name}")


def bpf_objects(pid: int) -> None:
    """BPF maps and programs the process holds, from /proc/PID/fdinfo."""
    maps: dict[str, list[int]] = defaultdict(list)
    progs: list[int] = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        memlock = int(fields.get("memlock", "0"))
        if link == "anon_inode:bpf-map":
            kind = BPF_MAP_TYPES.get(int(fields.get("map_type", "-1")), fields.get("map_type", ""))
            desc = f"{kind}"
            if kind == "ringbuf":
                desc += f" ({int(fields.get('max_entries', '0')) // 2**20} MiB)"
            maps[desc].append(memlock)
        elif link == "anon_inode:bpf-prog":
            progs.append(memlock)
    total = sum(sum(v) for v in maps.values())
    print(
        f"   BPF (kernel memory, memlock from fdinfo): {sum(len(v) for v in maps.values())} maps "
        f"{total / 2**20:.1f} MiB, {len(progs)} programs {sum(progs) / 2**20:.1f} MiB"
    )
    for desc, sizes in sorted(maps.items(), key=lambda kv: -sum(kv[1])):
        print(f"     {len(sizes):3d} x {desc:<28} {sum(sizes) / 2**20:7.1f} MiB")


def show_status(label: str, pid: int) -> dict[str, int]:
    st = status_kib(pid)
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    print(
        f"   {label}: VmRSS {st.get('VmRSS', 0) / MIB:.0f} MiB (anon "
        f"{st.get('RssAnon', 0) / MIB:.0f}, file {st.get('RssFile', 0) / MIB:.0f}, shmem "
        f"{st.get('RssShmem', 0) / MIB:.0f}); peak {st.get('VmHWM', 0) / MIB:.0f} MiB; "
        f"{threads} threads"
    )
    return st


def real_process(work: Path) -> int:
    execs = compile_c(EXECS_C, work / "execs")
    opens = compile_c(OPENS_C, work / "opens")
    alpha = AlphaProcess(work / "proc")
    try:
        print(f"1. qsc-alpha pid {alpha.pid}, default configuration, up in {alpha.start_s:.1f} s")
        time.sleep(8.0)  # past memscan's first periodic round (initial_delay 1 s)
        show_status("idle, 8 s after start", alpha.pid)
        subprocess.run([str(execs), "2000"], check=True)
        subprocess.run([str(opens), "20000", "/etc/shadow"], check=True)
        time.sleep(3.0)
        st = show_status("after 2,000 execs + 20,000 watched opens", alpha.pid)
        maps = smaps(alpha.pid)
        breakdown(maps)
        largest(maps)
        bpf_objects(alpha.pid)
        rss = st.get("VmRSS", 0) // MIB
        print(
            f"   goal RSS < {GOAL_MB} MB: {rss} MiB = {rss * 1.048576:.0f} MB -> "
            f"{'MET' if rss * 1.048576 < GOAL_MB else 'NOT MET'}"
        )
        return rss
    finally:
        alpha.stop()


# --- 2. step by step, in a child ---------------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_of(*needles: str) -> float:
    """MiB resident in this process's mappings whose name contains one of `needles`."""
    kib, name = 0, ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and ":" not in first:
            parts = line.split(None, 5)
            name = parts[5] if len(parts) > 5 else ""
        elif line.startswith("Rss:") and any(n in name for n in needles):
            kib += int(line.split()[1])
    return kib / 1024


def stages(config_path: str, execs: str, opens: str) -> None:
    """The child: build and run Alpha step by step, printing RSS after each step."""
    import importlib
    import tracemalloc

    last = rss_kib()
    print(f"   {'step':<60} {'RSS MiB':>8} {'+MiB':>7}")

    def step(label: str, extra: str = "") -> None:
        nonlocal last
        now = rss_kib() - tracemalloc.get_tracemalloc_memory() // 1024
        print(f"   {label:<60} {now / MIB:>8.1f} {(now - last) / MIB:>+7.1f} {extra}")
        last = now

    step("interpreter running this file (stdlib only)")
    for label, modules in (
        ("import grpc", ["grpc"]),
        ("import protobuf + the qsc messages", ["google.protobuf", "qsc.common.v1.event_pb2"]),
        ("import cryptography, nacl", ["cryptography.x509", "nacl.bindings"]),
        ("import yaml", ["yaml"]),
        ("import bcc (maps libbcc and LLVM)", ["bcc"]),
        ("import alpha.app (mesh, alpha and the rest)", ["alpha.app", "alpha.config"]),
    ):
        for module in modules:
            importlib.import_module(module)
        step(
            label, f"(LLVM/clang {rss_of('libLLVM', 'libclang'):.1f} MiB)" if "bcc" in label else ""
        )
    tracemalloc.start(1)
    from alpha.app import Alpha
    from alpha.config import load_alpha_config

    config = load_alpha_config(config_path)
    alpha = Alpha(config)
    traced0 = tracemalloc.take_snapshot()
    step("Alpha(config): rules compiled, outbox opened", f"traced {traced_mib():.1f} MiB")

    async def run() -> None:
        await alpha.start()
        step(
            "await start(): bcc compile+load, process table, sources",
            f"(LLVM/clang now {rss_of('libLLVM', 'libclang'):.1f} MiB, ring buffer mapping "
            f"{rss_of('bpf-map'):.1f} MiB)",
        )
        await asyncio.sleep(6.0)
        step("6 s running", f"traced {traced_mib():.1f} MiB")
        tracemalloc.reset_peak()
        await asyncio.to_thread(subprocess.run, [execs, "2000"], check=True)
        await asyncio.to_thread(subprocess.run, [opens, "20000", "/etc/shadow"], check=True)
        await asyncio.sleep(3.0)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        step(
            "2,000 execs + 20,000 watched opens, 3 s later",
            f"traced {traced_mib():.1f} MiB, traced peak during the burst {peak:.1f} MiB",
        )
        snap = tracemalloc.take_snapshot()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        top = snap.filter_traces(filters).statistics("filename")
        print("   Python allocations made after the imports, by file (tracemalloc, top 12):")
        for stat in top[:12]:
            name = str(stat.traceback[0].filename).replace(str(Path.cwd()) + "/", "")
            name = name.split("site-packages/")[-1]
            print(f"     {stat.size / 2**20:6.2f} MiB {stat.count:>8,} blocks  {name}")
        grew = snap.filter_traces(filters).compare_to(traced0.filter_traces(filters), "filename")
        print("   ... grown between Alpha(config) and the end (top 5):")
        for diff in grew[:5]:
            name = str(diff.traceback[0].filename).split("site-packages/")[-1]
            print(f"     {diff.size_diff / 2**20:+6.2f} MiB  {name}")
        await alpha.stop()

    asyncio.run(run())


def traced_mib() -> float:
    import tracemalloc

    return tracemalloc.get_traced_memory()[0] / 2**20


def staged(work: Path) -> None:
    config = write_alpha_config(work / "staged")
    execs, opens = work / "execs", work / "opens"  # compiled by real_process
    print("2. the same Alpha built step by step in a child Python (tracemalloc overhead removed)")
    argv = [sys.executable, str(Path(__file__).resolve()), "--stages", str(config)]
    done = subprocess.run(
        [*argv, str(execs), str(opens)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    print(done.stdout, end="")
    if done.returncode != 0:
        print(f"   the staged run failed ({done.returncode}): {done.stderr[-2000:]}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--stages":
        stages(*sys.argv[2:])
        return
    require_root(NAME)
    work = Path(tempfile.mkdtemp(prefix="qsc-bench-memory-"))
    try:
        real_process(work)
        staged(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
