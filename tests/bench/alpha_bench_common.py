"""Shared by the Alpha benchmarks (bench_alpha_vs_auditd, bench_alpha_detection_latency,
bench_alpha_memory): C load generators compiled at bench time, statistics, a real `qsc-alpha`
process on 127.0.0.1 with its own PKI and outbox, and a sealed Subscribe that timestamps what
arrives.

    alpha = AlphaProcess(work)              # qsc-alpha --config ... (sensors started on return)
    stream = SealedStream(alpha)            # every event, with the wall-clock time it arrived
    stream.wait_for(pred, timeout)          # -> (event, arrival ns) or None
    alpha.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.stream.batching import subscribe_context
from mesh.stream.sealing import SessionOpener, SubscriberHandshake
from qsc.common.v1 import event_pb2
from qsc.guardian.v1 import guardian_service_pb2 as gpb
from qsc.guardian.v1 import guardian_service_pb2_grpc as gpb_grpc

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
Event = event_pb2.Event

# N fork+exec of argv[2] (default /bin/true).
EXECS_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    const char *prog = argc > 2 ? argv[2] : "/bin/true";
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) { execl(prog, "true", (char *)0); _exit(127); }
        int status;
        waitpid(pid, &status, 0);
    }
    return 0;
}
"""
# N open(argv[2], O_RDONLY)+close.
OPENS_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0) close(fd);
    }
    return 0;
}
"""


def require_root(name: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{name}: run as root (eBPF)")


def compile_c(src: str, out: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("needs a C compiler (apt-get install gcc)")
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run([cc, "-O2", "-o", str(out), str(c)], check=True)
    return out


def timed(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(list(argv), check=True)
    return time.perf_counter() - start


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --- /proc memory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    name: str  # the path or [heap]/[stack]/anon_inode:... ; "" for anonymous
    perms: str
    size_kib: int
    fields: dict[str, int]  # Rss, Pss, Private_Dirty, Anonymous ... in KiB


def smaps(pid: int | str = "self") -> list[Mapping]:
    out: list[Mapping] = []
    name, perms, size = "", "", 0
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and ":" not in first:  # a header: "start-end perms offset dev inode name"
            if perms:
                out.append(Mapping(name, perms, size, fields))
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            perms, size = parts[1], (hi - lo) // 1024
            name = parts[5].strip() if len(parts) > 5 else ""
            fields = {}
        elif line.endswith(" kB"):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0])
    if perms:
        out.append(Mapping(name, perms, size, fields))
    return out


def status_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM ... from /proc/PID/status, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


# --- a real qsc-alpha --------------------------------------------------------------------------

CONFIG = """
[guardian]
role = "alpha"

[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"

[server.tls]
cert = "{pki}/alpha-127.0.0.1.crt"
key = "{pki}/alpha-127.0.0.1.key"
ca = "{pki}/ca.crt"

[outbox]
directory = "{base}/outbox"

[log]
level = "warning"

[auth]
state_directory = "{base}/state"
{extra}
"""


def alpha_command() -> list[str]:
    """The installed `qsc-alpha` entry point beside this interpreter, else `python -m alpha`."""
    script = Path(sys.executable).with_name("qsc-alpha")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "alpha"]


def write_alpha_config(base: Path, extra: str = "") -> Path:
    """A PKI of its own (alpha-127.0.0.1, cortex-c1) in base/pki and base/alpha.toml: the
    default configuration but for the TLS identity, the outbox and the auth state directory
    (kept below `base`), plus `extra` TOML."""
    base.mkdir(parents=True, exist_ok=True)
    pki = base / "pki"
    ca = init_ca(pki, "alpha-bench.test")
    for role, host in [("alpha", HOST), ("cortex", "c1")]:
        write_leaf(issue_leaf(ca, role, host), pki, ca.cert)
    config = base / "alpha.toml"
    config.write_text(CONFIG.format(pki=pki, base=base, extra=extra))
    return config


class AlphaProcess:
    """`qsc-alpha --config` with a PKI of its own in `base`; returns once it wrote its port
    (it does so after its sensors started). Everything but the TLS identity, the outbox and the
    auth state directory (kept below `base`) is the default configuration, plus `extra` TOML."""

    def __init__(self, base: Path, *, extra: str = "", env: dict[str, str] | None = None) -> None:
        self.base = base
        self.pki = base / "pki"
        config = write_alpha_config(base, extra)
        port_file = base / "port"
        self.log = base / "alpha.log"
        started = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*alpha_command(), "--config", str(config), "--port-file", str(port_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            )
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"qsc-alpha did not start:\n{self.output()}")
            time.sleep(0.05)
        self.start_s = time.monotonic() - started
        self.port = int(port_file.read_text())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def cpu_s(self) -> float:
        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def channel(alpha: AlphaProcess, stem: str = "cortex-c1") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        (alpha.pki / "ca.crt").read_bytes(),
        (alpha.pki / f"{stem}.key").read_bytes(),
        (alpha.pki / f"{stem}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"{HOST}:{alpha.port}", creds)


class SealedStream:
    """A sealed Subscribe from seq 0 with a cortex certificate, read on a thread. Each event is
    kept with the wall-clock time (ns) its batch arrived."""

    def __init__(self, alpha: AlphaProcess, stem: str = "cortex-c1") -> None:
        request = gpb.SubscribeRequest()
        key = serialization.load_pem_private_key((alpha.pki / f"{stem}.key").read_bytes(), None)
        handshake, offer = SubscriberHandshake.start(key, context=subscribe_context(request))  # type: ignore[arg-type]
        request.sealed_session.CopyFrom(offer)
        self._channel = channel(alpha, stem)
        stub = gpb_grpc.GuardianServiceStub(self._channel)
        self._call = cast(Any, stub.Subscribe(request))  # grpc-stubs types it too loosely
        first = next(self._call)
        ca = x509.load_pem_x509_certificate((alpha.pki / "ca.crt").read_bytes())
        self._opener: SessionOpener = handshake.finish(
            first.session_accept, ca_cert=ca, expected_role="alpha", expected_host=HOST
        )
        self.events: list[tuple[Event, int]] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                if response.WhichOneof("payload") != "sealed_batch":
                    continue
                batch = self._opener.open(response.sealed_batch)
                now = time.time_ns()
                with self._cond:
                    self.events.extend((e, now) for e in batch.events)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except BaseException as exc:
            self.error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[Event], bool], timeout: float, start: int = 0
    ) -> tuple[Event, int] | None:
        """The first event from index `start` on that satisfies `pred`, and its arrival time."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for item in self.events[seen:]:
                    if pred(item[0]):
                        return item
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return None
                self._cond.wait(left)

    def snapshot(self) -> list[tuple[Event, int]]:
        with self._cond:
            return list(self.events)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


def ts_ns(ts: Any) -> int:
    """A google.protobuf.Timestamp as integer nanoseconds."""
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)
