"""Alpha eBPF sensor benchmark: throughput, exact loss, CPU overhead, memory.

Run as root: ``.venv/bin/python tests/bench/bench_alpha_sensor.py`` (``make bench``). Not a test:
it prints figures and asserts nothing. About a minute on 2 vCPUs. Needs a C compiler for the
load generators (gcc); they are compiled at bench time so the kernel, not Python, sets the pace.

1. Throughput: a C flood alternates open() of a watched file (reported) and of /dev/null
   (dropped by the in-kernel path filter); figure = watched opens delivered to the consumer as
   decoded observations per second, with the loss counters (expected 0).
2. Overdriven: the same flood against a one-page ring buffer; delivered + counted loss must equal
   what the flood did, exactly.
3. CPU overhead: run time of 2,000 fork+exec of /bin/true with and without the sensor (all
   probes), and the sensor's own CPU time per exec.
4. Filter cost: run time of 1,000,000 open()+close() of /dev/null (filtered in the kernel) with
   and without the sensor.
5. Resident memory of the sensor process.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from alpha.sensors.ebpf import EbpfSensor
from alpha.sensors.model import Kind, Observation, SensorConfig

FLOOD_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        for (int a = 2; a < argc; a++) {
            int fd = open(argv[a], O_RDONLY);
            if (fd >= 0) close(fd);
        }
    }
    return 0;
}
"""
EXECS_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
        int status;
        waitpid(pid, &status, 0);
    }
    return 0;
}
"""
FLOOD_N = 300_000
OVERDRIVE_N = 200_000
EXECS_N = 2_000
FILTER_N = 1_000_000
REPS = 3


def compile_c(src: str, out: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench_alpha_sensor: needs a C compiler (apt-get install gcc)")
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run([cc, "-O2", "-o", str(out), str(c)], check=True)
    return out


def memory_mib() -> dict[str, int]:
    """Resident memory by kind, from /proc/self/smaps: the ring buffer's mapping (kernel memory,
    its data pages mapped twice), libbcc's LLVM/clang code (clean, shared file pages), the rest
    (Python, the process table, heaps)."""
    kib = {"ring": 0, "llvm": 0, "rest": 0}
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and ":" not in first:  # a mapping header: "start-end perms ... name"
            parts = line.split()
            name = parts[5] if len(parts) > 5 else ""
        elif line.startswith("Rss:"):
            value = int(line.split()[1])
            if "bpf-map" in name:
                kib["ring"] += value
            elif "libLLVM" in name or "libclang" in name:
                kib["llvm"] += value
            else:
                kib["rest"] += value
    return {k: v // 1024 for k, v in kib.items()}


def show(mem: dict[str, int]) -> str:
    total = sum(mem.values())
    return (
        f"{total} MiB = ring-buffer mapping {mem['ring']} + LLVM/clang code {mem['llvm']} "
        f"+ Python, tables and heaps {mem['rest']}"
    )


class Counter:
    """The consumer: counts watched opens from the flood, remembers when the last arrived."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.n = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, batch: list[Observation]) -> None:
        k = 0
        for o in batch:
            if o.kind is Kind.OPEN and getattr(o.detail, "path", "") == self.path:
                k += 1
        if k:
            with self.lock:
                self.n += k
                self.last = time.perf_counter()


def wait_quiet(sensor: EbpfSensor, counter: Counter, target: int, limit: float = 30.0) -> None:
    """Until every flood open is delivered or counted lost, or nothing moves for 1 s."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        seen = counter.n + sensor.loss().kernel
        if seen >= target:
            return
        if seen != last:
            last, since = seen, time.monotonic()
        elif time.monotonic() - since > 1.0:
            return
        time.sleep(0.02)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def median_time(run: Callable[[], float], reps: int = REPS) -> float:
    return statistics.median(run() for _ in range(reps))


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_alpha_sensor: run as root (eBPF)")
    work = Path(tempfile.mkdtemp(prefix="qsc-bench-"))
    try:
        flood = compile_c(FLOOD_C, work / "flood")
        execs = compile_c(EXECS_C, work / "execs")
        watched = work / "watched"
        watched.write_text("x")
        path = str(watched)
        mem_before = memory_mib()

        # Baselines without any sensor.
        exec_base = median_time(lambda: timed([str(execs), str(EXECS_N)]))
        filter_base = median_time(lambda: timed([str(flood), str(FILTER_N), "/dev/null"]))

        # 1. Throughput, zero loss, through a filter.
        counter = Counter(path)
        config = SensorConfig(read_prefixes=(path,), ring_buffer_pages=16384)  # 64 MiB ring
        sensor = EbpfSensor(config, counter)
        t0 = time.perf_counter()
        sensor.start()
        start_s = time.perf_counter() - t0
        mem_started = memory_mib()
        rates = []
        for _ in range(REPS):
            before_n, before_lost = counter.n, sensor.loss().kernel
            filtered0 = sensor.status().stats.kernel_filtered
            start = time.perf_counter()
            subprocess.run([str(flood), str(FLOOD_N), path, "/dev/null"], check=True)
            flood_s = time.perf_counter() - start
            wait_quiet(sensor, counter, before_n + before_lost + FLOOD_N)
            got = counter.n - before_n
            lost = sensor.loss().kernel - before_lost
            filtered = sensor.status().stats.kernel_filtered - filtered0
            rates.append(got / (counter.last - start))
            print(
                f"  flood: {FLOOD_N:,} watched + {FLOOD_N:,} filtered opens in {flood_s:.2f} s; "
                f"delivered {got:,}, lost {lost}, kernel-filtered {filtered:,}, "
                f"{got / (counter.last - start):,.0f} events/s"
            )
        print(
            f"1. throughput (decoded, zero loss): median {statistics.median(rates):,.0f} events/s"
        )

        # 3, 4. Overheads with the full sensor attached.
        cpu0 = time.process_time()
        exec_with = median_time(lambda: timed([str(execs), str(EXECS_N)]))
        sensor_cpu = (time.process_time() - cpu0) / (REPS * EXECS_N)
        filter_with = median_time(lambda: timed([str(flood), str(FILTER_N), "/dev/null"]))
        mem_loaded = memory_mib()
        status = sensor.status()
        t0 = time.perf_counter()
        sensor.stop()
        stop_s = time.perf_counter() - t0

        # 2. Overdriven: a one-page ring buffer.
        counter2 = Counter(path)
        tiny = SensorConfig(  # only the flood's opens can pass: the counts are exact
            probes=("open",),
            read_prefixes=(path,),
            write_prefixes=(),
            relative_writes=False,
            ring_buffer_pages=1,
        )
        sensor2 = EbpfSensor(tiny, counter2)
        sensor2.start()
        subprocess.run([str(flood), str(OVERDRIVE_N), path], check=True)
        wait_quiet(sensor2, counter2, OVERDRIVE_N)
        sensor2.stop()
        loss2 = sensor2.loss()
        total2 = counter2.n + loss2.kernel
        print(
            f"2. overdriven (4 KiB ring): flood {OVERDRIVE_N:,} opens -> delivered "
            f"{counter2.n:,} + counted lost in kernel {loss2.kernel:,} = {total2:,} "
            f"({'exact' if total2 == OVERDRIVE_N else 'MISMATCH'}); queue drops {loss2.queue}"
        )
        print(
            f"3. exec-heavy workload ({EXECS_N:,} fork+exec /bin/true): "
            f"{exec_base:.3f} s without, {exec_with:.3f} s with the sensor "
            f"(x{exec_with / exec_base:.2f}); sensor CPU {sensor_cpu * 1e6:.0f} us per exec"
        )
        print(
            f"4. filtered syscalls ({FILTER_N:,} open+close of /dev/null): {filter_base:.3f} s "
            f"without, {filter_with:.3f} s with (x{filter_with / filter_base:.2f}, "
            f"+{(filter_with - filter_base) / FILTER_N * 1e9:.0f} ns per open+close)"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"5. resident memory: before the sensor {show(mem_before)}")
        print(f"   sensor started: {show(mem_started)}")
        print(f"   after the floods (64 MiB ring touched): {show(mem_loaded)}; peak {peak} MiB")
        print(f"   process table: {len(sensor.table)} entries")
        print(
            f"   start {start_s:.1f} s (compile, load, attach {len(status.probes)} tracepoints), "
            f"stop {stop_s:.1f} s; loss during the run: {status.loss}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
