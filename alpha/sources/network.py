"""The socket source ("sockets"): sock_diag polling; with the eBPF sensor also scans from connects
and blocklist marks on its connect/accept events. `socket_protocol` tells the converter whether
a connecting inet socket is TCP or UDP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from pathlib import Path

from alpha.config import NetworkSection
from alpha.network import NetworkDetector, SocketPoller, SocketUnavailableError, annotate_blocklists
from alpha.network import finding_to_event as network_event
from alpha.pipeline import Event, Pipeline
from alpha.sensors.model import (
    Kind,
    Observation,
)
from alpha.sensors.proctable import PROC, parse_inet_table
from alpha.sources.common import LateLookup, Periodic
from alpha.sources.syscalls import SyscallSource
from mesh.guardian.sensors import SensorHandle, SensorRegistry, SensorState


def _read_table(path: str, limit: int = 4 << 20) -> str:
    """A /proc/net table to its end (seq files return one page per read)."""
    chunks: list[bytes] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = 0
        while size < limit and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def socket_protocol(pid: int, fd: int, proc: Path = PROC) -> str:
    """ "tcp" or "udp" for an inet socket fd of a live process, "" when it cannot be told (the
    process is gone). A connecting inet socket that is not UDP is taken as TCP: raw sockets
    rarely connect."""
    try:
        target = os.readlink(f"{proc}/{pid}/fd/{fd}")
    except OSError:
        return ""
    if not target.startswith("socket:["):
        return ""
    inode = int(target[len("socket:[") : -1])
    for table in ("udp", "udp6"):
        if inode in parse_inet_table(_read_table(f"{proc}/{pid}/net/{table}")):
            return "udp"
    return "tcp"


class NetworkSource:
    """The socket poller and detectors. With the eBPF sensor's connects, outbound scans and
    blocklists come from them (`on_observations`, `enrich`), as NetworkDetectConfig says."""

    def __init__(
        self,
        config: NetworkSection,
        pipeline: Pipeline,
        registry: SensorRegistry,
        lookup: LateLookup,
        syscalls: SyscallSource,
        *,
        name: str = "sockets",
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._registry = registry
        self._lookup = lookup
        self._syscalls = syscalls
        self._name = name
        self.detector: NetworkDetector | None = None
        self.poller: SocketPoller | None = None
        self.handle: SensorHandle | None = None
        self._lock = threading.Lock()  # the detector is single-threaded: poller vs pipeline
        self._periodic: Periodic | None = None
        self._standing: tuple[str, ...] = ()  # why this source is degraded even when polls work
        self._ebpf = False  # connects come from the eBPF sensor
        self._closes = False  # so do TCP sockets' ends, with their final counters

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        self._ebpf = ebpf = self._syscalls.ebpf_connections
        detect = dataclasses.replace(self.config, ebpf_connections=ebpf)
        self.detector = NetworkDetector(detect)
        self.poller = SocketPoller(backend=self.config.backend, process_info=self._lookup)
        self._closes = closes = self._syscalls.ebpf_tcp_closes
        reasons: tuple[str, ...] = ()
        if not ebpf:
            reasons = ("connects seen only by polling (no eBPF connect probe)",)
        if not closes:
            reasons += (
                "transfers counted only by polling (no eBPF tcp probe): a connection that "
                "opens and closes between two polls is missed",
            )
        self.handle = self._registry.register(
            self._name,
            mode="sock_diag+ebpf" if ebpf or closes else "sock_diag",
            state=SensorState.DEGRADED if reasons else SensorState.HEALTHY,
            reasons=reasons,
        )
        self._standing = reasons
        if ebpf or closes:
            self.pipeline.add_source(self.on_observations)
        if ebpf:
            matcher = self.detector.blocklists
            if matcher:
                self.pipeline.set_enrich(lambda event: annotate_blocklists(event, matcher))
        self._periodic = Periodic(
            "qsc-alpha-sockets", self.config.poll_interval.total_seconds(), self.poll_once
        )
        self._periodic.start()

    def on_observations(self, batch: list[Observation]) -> list[Event]:
        detector = self.detector
        if detector is None:
            return []
        findings = []
        with self._lock:
            for obs in batch:
                if obs.kind is Kind.TCP_CLOSE or (obs.kind is Kind.CONNECT and self._ebpf):
                    findings.extend(detector.on_observation(obs))
        return [network_event(f) for f in findings]

    def poll_once(self) -> None:
        poller, detector, handle = self.poller, self.detector, self.handle
        if poller is None or detector is None or handle is None:
            return
        try:
            result = poller.poll()
        except SocketUnavailableError as exc:
            handle.degraded(f"socket poll failed: {exc}")
            return
        with self._lock:
            findings = detector.on_poll(result)
        if self._standing:
            handle.degraded(*self._standing)
        else:
            handle.healthy()
        if findings:
            events = [network_event(f) for f in findings]
            handle.count_event(len(events))
            self.pipeline.handle_findings(events)

    async def stop(self) -> None:
        if self._periodic is not None:
            await asyncio.to_thread(self._periodic.stop)
        if self.poller is not None:
            self.poller.close()
