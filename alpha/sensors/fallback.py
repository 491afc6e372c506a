"""The degraded sensor, for hosts where eBPF cannot load (not root, no tracefs or headers, bcc
missing): process exec/exit (plus fork, ptrace and uid changes) from the kernel's netlink
process connector, or, when that is refused too (it needs CAP_NET_ADMIN), from polling /proc.

It always reports itself degraded, with the reasons eBPF (and netlink) could not be used. The
netlink connector sees every exec but gives no arguments, so they are read from /proc and can
be missed for very short processes; /proc polling misses anything shorter than its interval.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alpha.sensors.model import (
    UNKNOWN_STDIO,
    Delivery,
    ExecDetail,
    ExitDetail,
    ForkDetail,
    Kind,
    LossCounters,
    Observation,
    ObservationCallback,
    ProcessInfo,
    PtraceDetail,
    SensorConfig,
    SensorMode,
    SensorState,
    SensorStatus,
    SensorUnavailable,
    SetIdDetail,
)
from alpha.sensors.proctable import (
    PROC,
    CgroupResolver,
    ProcessTable,
    ProcSnapshot,
    parse_stat,
    read_boot_id,
    read_snapshot,
)

log = logging.getLogger(__name__)

# --- the netlink process connector (linux/connector.h, linux/cn_proc.h) -------------------------

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2
NLMSG_DONE: Final = 3

PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXEC: Final = 0x00000002
PROC_EVENT_UID: Final = 0x00000004
PROC_EVENT_PTRACE: Final = 0x00000100
PROC_EVENT_EXIT: Final = 0x80000000

_NLMSGHDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG: Final = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EV_HDR: Final = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_FOUR: Final = struct.Struct("=IIII")
_TWO: Final = struct.Struct("=II")


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One process-connector event; unused fields are 0."""

    what: int
    mono_ns: int
    pid: int
    tgid: int
    parent_pid: int = 0  # fork: the parent; ptrace: the tracer
    parent_tgid: int = 0
    exit_code: int = 0
    ruid: int = 0
    euid: int = 0


def listen_message(op: int = PROC_CN_MCAST_LISTEN, seq: int = 0) -> bytes:
    """The netlink datagram that subscribes to (or leaves) process events."""
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, 0, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, seq, 0) + cn


def parse_proc_events(datagram: bytes) -> list[ProcEvent]:
    """Every process event in one netlink datagram (pure; ignores what it does not know)."""
    out: list[ProcEvent] = []
    off = 0
    while off + _NLMSGHDR.size <= len(datagram):
        length, _type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(datagram, off)
        if length < _NLMSGHDR.size or off + length > len(datagram):
            break
        body = off + _NLMSGHDR.size
        if length >= _NLMSGHDR.size + _CN_MSG.size + _EV_HDR.size:
            idx, val, _s, _a, _len, _f = _CN_MSG.unpack_from(datagram, body)
            if (idx, val) == (CN_IDX_PROC, CN_VAL_PROC):
                ev = _parse_event(datagram, body + _CN_MSG.size, off + length)
                if ev is not None:
                    out.append(ev)
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return out


def _parse_event(buf: bytes, off: int, end: int) -> ProcEvent | None:
    what, _cpu, ts = _EV_HDR.unpack_from(buf, off)
    data = off + _EV_HDR.size
    if what == PROC_EVENT_FORK and data + 16 <= end:
        ppid, ptgid, cpid, ctgid = _FOUR.unpack_from(buf, data)
        return ProcEvent(what, ts, cpid, ctgid, ppid, ptgid)
    if what == PROC_EVENT_EXEC and data + 8 <= end:
        pid, tgid = _TWO.unpack_from(buf, data)
        return ProcEvent(what, ts, pid, tgid)
    if what == PROC_EVENT_UID and data + 16 <= end:
        pid, tgid, ruid, euid = _FOUR.unpack_from(buf, data)
        return ProcEvent(what, ts, pid, tgid, ruid=ruid, euid=euid)
    if what == PROC_EVENT_PTRACE and data + 16 <= end:
        pid, tgid, tracer_pid, tracer_tgid = _FOUR.unpack_from(buf, data)
        return ProcEvent(what, ts, pid, tgid, tracer_pid, tracer_tgid)
    if what == PROC_EVENT_EXIT and data + 12 <= end:
        pid, tgid, code = struct.unpack_from("=IIi", buf, data)
        return ProcEvent(what, ts, pid, tgid, exit_code=code)
    return None


def open_proc_connector() -> socket.socket:
    """A subscribed process-connector socket. Raises SensorUnavailable (needs CAP_NET_ADMIN)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as exc:
        raise SensorUnavailable(f"netlink connector unavailable: {exc}") from exc
    try:
        sock.bind((0, CN_IDX_PROC))
        try:  # a big buffer rides out bursts; FORCE needs CAP_NET_ADMIN, which we have here
            sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.send(listen_message())
    except OSError as exc:
        sock.close()
        raise SensorUnavailable(f"netlink process connector refused: {exc}") from exc
    sock.settimeout(0.2)
    return sock


# --- the sensor ---------------------------------------------------------------------------------


def _boot_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC: the time spent suspended."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class FallbackSensor:
    """Netlink (preferred) or /proc polling; always degraded. `ebpf_reasons` says why eBPF is
    not in use; they lead the status reasons."""

    def __init__(
        self,
        config: SensorConfig,
        on_observations: ObservationCallback | None = None,
        *,
        ebpf_reasons: tuple[str, ...] = (),
        proc: Path = PROC,
    ) -> None:
        self.config = config
        self._proc = proc
        self._delivery = Delivery(config.queue_max_events, on_observations)
        self._reasons = list(ebpf_reasons)
        self._state = SensorState.STARTING
        self.mode = SensorMode.NETLINK
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._overruns = 0
        self._started_ns: int | None = None
        self._started_mono_ns: int | None = None
        self._self = os.getpid()
        self.table = ProcessTable(
            read_boot_id(proc),
            proc=proc,
            ancestry_depth=config.ancestry_depth,
            cgroups=CgroupResolver.detect(proc),
        )
        self._known: dict[int, tuple[int, str, tuple[str, ...]]] = {}  # proc_poll state

    def start(self) -> None:
        if self.config.fallback in ("auto", "netlink"):
            try:
                self._sock = open_proc_connector()
            except SensorUnavailable as exc:
                if self.config.fallback == "netlink":
                    raise
                self._reasons.append(str(exc))
        if self._sock is None:
            self.mode = SensorMode.PROC_POLL
        self._reasons.append(
            "degraded sensor: "
            + (
                "netlink process connector (exec/exit/fork/ptrace/uid only)"
                if self._sock
                else f"/proc polling every {self.config.proc_poll_interval_ms} ms "
                "(exec/exit only; short-lived processes can be missed)"
            )
        )
        self.table.seed()
        if self._sock is None:
            self._poll_proc(initial=True)
        self._started_ns = time.time_ns()
        self._started_mono_ns = time.monotonic_ns()
        self._state = SensorState.DEGRADED
        target = self._run_netlink if self._sock else self._run_proc_poll
        self._thread = threading.Thread(target=target, name="qsc-fallback-sensor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(listen_message(PROC_CN_MCAST_IGNORE))
            self._sock.close()
            self._sock = None
        self._state = SensorState.STOPPED

    def __enter__(self) -> FallbackSensor:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- netlink

    def _run_netlink(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while not self._stop.is_set():
                self._delivery.polled()
                try:
                    datagram = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:  # the kernel dropped events: count it
                        self._overruns += 1
                        continue
                    raise
                events = parse_proc_events(datagram)
                offset = _boot_offset_ns()
                wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                out = [o for ev in events if (o := self._observe(ev, offset, wall)) is not None]
                self._delivery.deliver(out)
        except Exception as exc:
            log.exception("netlink sensor failed")
            self._state = SensorState.FAILED
            self._reasons.append(f"netlink loop failed: {exc!r}")

    def _observation(
        self,
        kind: Kind,
        boot_ns: int,
        wall_offset: int,
        pid: int,
        tid: int,
        info: ProcessInfo | None,
        detail: ExecDetail | ExitDetail | ForkDetail | PtraceDetail | SetIdDetail,
        source: str,
    ) -> Observation:
        return Observation(
            kind=kind,
            time_ns=boot_ns + wall_offset,
            boot_ns=boot_ns,
            pid=pid,
            tid=tid,
            ppid=info.ppid if info else 0,
            uid=info.uid if info else -1,
            gid=info.gid if info else -1,
            euid=info.euid if info else None,
            comm=info.comm if info else "",
            syscall="",
            ret=None,
            process=info,
            detail=detail,
            source=source,
        )

    def _exec_observation(
        self, pid: int, tid: int, boot_ns: int, wall: int, snap: ProcSnapshot | None, source: str
    ) -> Observation:
        if snap is None:
            snap = read_snapshot(pid, self._proc)
        known = self.table.info(pid) if snap is None else None
        info, snap = self.table.exec(
            pid,
            boot_ns,
            filename=snap.exe if snap else "",
            args=snap.args if snap else None,
            uid=snap.uid if snap else (known.uid if known else -1),
            gid=snap.gid if snap else (known.gid if known else -1),
            comm=snap.comm if snap else (known.comm if known else ""),
            snapshot=snap,
        )
        exe = info.exe
        detail = ExecDetail(
            filename=exe,
            exe=exe,
            args=info.args,
            args_truncated=False,
            cwd=info.cwd,
            dirfd=0,
            at_flags=0,
            from_memfd=exe.startswith("/memfd:"),
            exe_deleted=exe.endswith(" (deleted)"),
            setuid_exec=bool(snap and snap.euid != snap.uid),
            stdio=snap.stdio if snap else UNKNOWN_STDIO,
            old_pid=tid,
        )
        return self._observation(Kind.EXEC, boot_ns, wall, pid, tid, info, detail, source)

    def _observe(self, ev: ProcEvent, offset: int, wall: int) -> Observation | None:
        boot_ns = ev.mono_ns + offset
        detail: ForkDetail | PtraceDetail | SetIdDetail | ExitDetail
        if ev.what == PROC_EVENT_FORK:
            if ev.pid != ev.tgid:  # a new thread, not a process
                return None
            child = self.table.fork(ev.parent_tgid, ev.tgid, boot_ns)
            info = self.table.info(ev.parent_tgid)
            detail = ForkDetail(ev.tgid, 0, child.exec_id if child else "")
            return self._observation(
                Kind.FORK, boot_ns, wall, ev.parent_tgid, ev.parent_pid, info, detail, "netlink"
            )
        if ev.tgid == self._self:
            return None
        if ev.what == PROC_EVENT_EXEC:
            return self._exec_observation(ev.tgid, ev.pid, boot_ns, wall, None, "netlink")
        if ev.what == PROC_EVENT_EXIT:
            if ev.pid != ev.tgid:
                return None
            info = self.table.exit(ev.tgid)
            code = ev.exit_code  # a wait status: exit code, or the killing signal
            signo = code & 0x7F
            detail = ExitDetail(None, signo) if signo else ExitDetail((code >> 8) & 0xFF)
            return self._observation(
                Kind.EXIT, boot_ns, wall, ev.tgid, ev.pid, info, detail, "netlink"
            )
        if ev.what == PROC_EVENT_PTRACE:
            info = self.table.info(ev.parent_tgid) if ev.parent_tgid else None
            # The connector reports the tracee and its tracer; tracer 0 means detach.
            name = "PTRACE_ATTACH" if ev.parent_tgid else "PTRACE_DETACH"
            detail = PtraceDetail(16 if ev.parent_tgid else 17, name, ev.tgid, 0, 0)
            pid = ev.parent_tgid or ev.tgid
            return self._observation(
                Kind.PTRACE, boot_ns, wall, pid, ev.parent_pid, info, detail, "netlink"
            )
        if ev.what == PROC_EVENT_UID:
            self.table.set_ids(ev.tgid, ev.ruid, ev.euid)
            info = self.table.info(ev.tgid)
            detail = SetIdDetail((ev.ruid, ev.euid))
            return self._observation(
                Kind.SETID, boot_ns, wall, ev.tgid, ev.pid, info, detail, "netlink"
            )
        return None

    # --- /proc polling

    def _run_proc_poll(self) -> None:
        interval = self.config.proc_poll_interval_ms / 1000
        try:
            while not self._stop.wait(interval):
                self._delivery.polled()
                self._poll_proc()
        except Exception as exc:
            log.exception("/proc polling failed")
            self._state = SensorState.FAILED
            self._reasons.append(f"/proc polling failed: {exc!r}")

    def _poll_proc(self, initial: bool = False) -> None:
        """Diff /proc against the last scan: new (pid, start) or a changed image is an exec,
        a vanished pid an exit."""
        now_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        wall = time.time_ns() - now_boot
        seen: dict[int, tuple[int, str, tuple[str, ...]]] = {}
        out: list[Observation] = []
        for name in os.listdir(self._proc):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                _comm, _ppid, start = parse_stat((self._proc / name / "stat").read_text())
                exe = os.readlink(self._proc / name / "exe")
            except (OSError, ValueError, IndexError):
                continue  # gone, or a kernel thread (no exe)
            old = self._known.get(pid)
            seen[pid] = (start, exe, old[2] if old and old[0] == start else ())
            if initial or pid == self._self:
                continue
            if old is None or old[0] != start or old[1] != exe:
                snap = read_snapshot(pid, self._proc)
                if snap is None:
                    continue
                seen[pid] = (start, exe, snap.args)
                out.append(self._exec_observation(pid, pid, now_boot, wall, snap, "proc_poll"))
        if not initial:
            for pid in self._known.keys() - seen.keys():
                info = self.table.exit(pid)
                out.append(
                    self._observation(
                        Kind.EXIT, now_boot, wall, pid, pid, info, ExitDetail(None), "proc_poll"
                    )
                )
        self._known = seen
        self._delivery.deliver(out)

    # --- consumers

    def observations(
        self, timeout: float | None = None, max_events: int = 65536
    ) -> list[Observation]:
        return self._delivery.take(timeout, max_events)

    def loss(self) -> LossCounters:
        return LossCounters(
            queue=self._delivery.dropped,
            consumer=self._delivery.consumer_errors,
            source=self._overruns,
        )

    def status(self) -> SensorStatus:
        stats = self._delivery.stats(self._started_ns, self._started_mono_ns)
        watches = (
            ("netlink:proc_connector",)
            if self.mode is SensorMode.NETLINK
            else (f"proc_poll:{self._proc}",)
        )
        return SensorStatus(
            self.mode, self._state, tuple(self._reasons), self.loss(), stats, watches
        )
