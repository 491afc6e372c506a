"""The guardian runtime Alpha and Beta build on: identity, outbox, sensors, GuardianService.

    guardian = Guardian(config)                    # loads the TLS identity, opens the outbox
    guardian.add_service(alpha_binding)            # e.g. AlphaService, before start
    guardian.add_worker(my_sensor)                 # anything with async start() / stop()
    handle = guardian.sensors.register("ebpf.exec", mode="ebpf")
    seq = guardian.emit(event)                     # from any thread
    port = await guardian.start()                  # serve, start the workers
    await guardian.stop()                          # drain (mesh.service calls it on SIGTERM)

`emit` stamps what the producer left empty (id as a UUIDv7, guardian, observed_time, and time
defaults to observed_time) and appends to the durable outbox before anyone can see the event.
Producers never wait for subscribers: each Subscribe stream reads the outbox at its own pace.

Shutdown (`stop`): the server drains (health NOT_SERVING, streams send
what they hold and end OK, bounded grace), then workers stop in reverse order, a last loss report
is emitted, and the outbox is fsynced and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from crypto.pki import normalize_host
from mesh.errors import ConfigError
from mesh.identity import load_tls
from mesh.ids import uuid7_many
from mesh.logs import log_event
from mesh.server import ComponentServer, ServiceBinding
from mesh.stream.batching import max_event_bytes
from mesh.stream.outbox import Outbox, RecordTooLargeError
from mesh.stream.outbox_segment import SEQ_FIELD_MAX
from mesh.stream.service import GuardianServicer, SealingIdentity
from qsc.common.v1 import event_pb2, identity_pb2

from .config import GuardianConfig
from .sensors import SensorRegistry

__all__ = ["Guardian", "Worker"]

_log = logging.getLogger("qsc.guardian")
_ROLES: Final = {"alpha": identity_pb2.ROLE_ALPHA, "beta": identity_pb2.ROLE_BETA}


class Worker(Protocol):
    """A sensor or other long-running part of a guardian, started and stopped with it."""

    @property
    def name(self) -> str: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Guardian:
    """One guardian process's runtime; see the module docstring."""

    def __init__(self, config: GuardianConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        tls = load_tls(config.server.tls)  # IdentityError naming the file, before anything else
        identity = tls.identity
        section = config.guardian
        if identity.role != section.role:
            raise ConfigError(
                "guardian.role",
                f"is {section.role!r} but {config.server.tls.cert} certifies role "
                f"{identity.role!r}",
            )
        host = normalize_host(section.host) if section.host else identity.host
        if host != identity.host:
            raise ConfigError(
                "guardian.host",
                f"is {section.host!r} but {config.server.tls.cert} certifies host "
                f"{identity.host!r}",
            )
        self.ref = identity_pb2.GuardianRef(
            id=section.id or f"{section.role}-{host}", role=_ROLES[section.role], host=host
        )
        settings = config.stream_settings()
        # Refused at emit: an event no message could carry would wedge every subscriber.
        self._max_event_bytes = max_event_bytes(settings) - SEQ_FIELD_MAX
        self.started_at = clock()
        self.outbox = Outbox.open(
            config.outbox.directory, config.outbox, guardian=self.ref, clock=clock
        )
        try:
            self.sensors = SensorRegistry(self.emit, clock=clock)
            self.server = ComponentServer(config.server, component=section.role)
            self.servicer = GuardianServicer(
                outbox=self.outbox,
                guardian=self.ref,
                settings=settings,
                sealing=SealingIdentity.from_tls(tls),
                draining=self.server.draining,
                status=self.sensors,
                retention=config.outbox.retention,
                start_time=self.started_at,
                clock=clock,
                transport=self.server.transport_status,
            )
            self.server.add_service(self.servicer.binding())
        except BaseException:
            self.outbox.close()
            raise
        self._workers: list[Worker] = []
        self._started: list[Worker] = []
        self._loss_task: asyncio.Task[None] | None = None
        self._closed = False

    # --- producing ------------------------------------------------------------------------

    def emit(self, event: event_pb2.Event) -> int:
        """Stamp and append one event; return its seq. Thread-safe."""
        return self.emit_many((event,))[0]

    def emit_many(self, events: Iterable[event_pb2.Event]) -> tuple[int, int]:
        """Stamp and append events contiguously; return (first seq, last seq). Thread-safe."""
        batch = list(events)
        now = self._clock()
        seconds, nanos = divmod(int(now * 1e9), 1_000_000_000)
        ids = iter(uuid7_many(now, sum(1 for e in batch if not e.id)))
        for event in batch:
            if not event.id:
                event.id = next(ids)
            if not event.HasField("guardian"):
                event.guardian.CopyFrom(self.ref)
            if not event.HasField("observed_time"):
                observed = event.observed_time
                observed.seconds, observed.nanos = seconds, nanos
            if not event.HasField("time"):
                event.time.CopyFrom(event.observed_time)
            size = event.ByteSize()
            if size > self._max_event_bytes:
                raise RecordTooLargeError(
                    f"an event of {size} bytes exceeds the {self._max_event_bytes} bytes one "
                    "stream message can carry; shrink it or raise [server] max_message_bytes"
                )
        return self.outbox.append_many(batch)

    # --- assembling -----------------------------------------------------------------------

    def add_service(self, binding: ServiceBinding) -> None:
        """Serve another service beside GuardianService (e.g. AlphaService); before start."""
        self.server.add_service(binding)

    def add_worker(self, worker: Worker) -> None:
        """Start `worker` with the guardian and stop it (reverse order) before the outbox closes."""
        if self._started or self._closed:
            raise RuntimeError("add workers before start()")
        self._workers.append(worker)

    @property
    def port(self) -> int:
        return self.server.port

    # --- running --------------------------------------------------------------------------

    async def start(self) -> int:
        """Serve, then start the workers; return the bound port."""
        if self._closed:
            raise RuntimeError("this guardian was stopped; build a new one")
        port = await self.server.start()
        for worker in self._workers:
            await worker.start()
            self._started.append(worker)
        interval = self.config.guardian.loss_report_interval.total_seconds()
        self._loss_task = asyncio.create_task(self._report_losses(interval), name="loss-reports")
        log_event(
            _log,
            "guardian listening",
            guardian=self.ref.id,
            port=port,
            identity=self.server.identity.spiffe_id,
            outbox_last_seq=self.outbox.last_seq,
            workers=[w.name for w in self._workers],
        )
        return port

    async def stop(self) -> None:
        """Drain the server, stop workers, close the outbox. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.server.stop()
        finally:
            await self._close()

    async def _close(self) -> None:
        for worker in reversed(self._started):
            try:
                await worker.stop()
            except Exception as exc:  # one worker's failure must not keep the outbox open
                log_event(
                    _log,
                    "worker failed to stop",
                    level=logging.ERROR,
                    exc_info=exc,
                    worker=worker.name,
                )
        self._started.clear()
        if self._loss_task is not None:
            self._loss_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loss_task
        try:
            self.sensors.report_losses()
        finally:
            self.outbox.close()
        log_event(_log, "guardian stopped", guardian=self.ref.id, last_seq=self.outbox.last_seq)

    async def _report_losses(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.sensors.report_losses()
            except Exception as exc:  # keep reporting: the next round may succeed
                log_event(_log, "loss report failed", level=logging.ERROR, exc_info=exc)
