"""The Cortex assembled: event store, ingest of every guardian, the mesh server.

    cortex = Cortex(config, config_path=path)   # identity checked, store opened (or created)
    port = await cortex.start()                  # following the guardians; serving
    cortex.reload()                              # SIGHUP: re-read the guardian list
    await cortex.stop()                          # drain the server, stop ingest, close the store

`qsc-cortex run` runs it in mesh.service, which wires SIGTERM/SIGINT to `stop` and SIGHUP to
`reload`. The store is opened in the constructor, so a wrong key, another Cortex's database or a
corrupted file refuses the start before anything listens (`StoreOpenError` names the file).
Checkpoints are signed with the TLS identity's key (`cortex.store.checkpoint`).

The read API (`cortex.service.CortexServicer(store, directory)`) is served when that module
provides it; otherwise the server carries health and reflection only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import logging
from pathlib import Path

from cortex.config import COMPONENT, CortexConfig, load_cortex_config
from cortex.guardian_view import GuardianDirectory
from cortex.ingest import Ingest, OwnIdentity
from cortex.store import CheckpointSigner, SqliteEventStore
from mesh.channel import open_channel
from mesh.errors import ConfigError, MeshError
from mesh.identity import load_tls
from mesh.logs import log_event
from mesh.server import ComponentServer, ServiceBinding
from mesh.stream.subscriber import Dialer

__all__ = ["SERVICE_NAME", "Cortex", "open_store"]

_log = logging.getLogger(__name__)

SERVICE_NAME = "qsc.cortex.v1.CortexService"


def open_store(config: CortexConfig, signer: CheckpointSigner) -> SqliteEventStore:
    """The writer's store: created in an empty directory, refused over anything else."""
    return SqliteEventStore.open_with_keyring(
        config.store.store_config(),
        config.keyring.directory,
        component=COMPONENT,
        signer=signer,
        create=True,
    )


def _servicer_binding(store: SqliteEventStore, directory: GuardianDirectory) -> ServiceBinding:
    """`cortex.service.CortexServicer` bound, when that module exists and provides it."""
    if importlib.util.find_spec("cortex.service") is None:
        raise LookupError("cortex.service is not there")
    module = importlib.import_module("cortex.service")
    servicer_class = getattr(module, "CortexServicer", None)
    if servicer_class is None:
        raise LookupError("cortex.service has no CortexServicer")
    servicer = servicer_class(store, directory)
    binding = getattr(servicer, "binding", None)
    if callable(binding):
        result = binding()
        if isinstance(result, ServiceBinding):
            return result
    from qsc.cortex.v1 import cortex_service_pb2_grpc

    return ServiceBinding(
        SERVICE_NAME, cortex_service_pb2_grpc.add_CortexServiceServicer_to_server, servicer
    )


class Cortex:
    """The `qsc-cortex run` service (`mesh.service.Service`)."""

    def __init__(
        self,
        config: CortexConfig,
        *,
        config_path: Path | None = None,
        dial: Dialer = open_channel,
    ) -> None:
        self.config = config
        self.config_path = config_path
        material = load_tls(config.server.tls)
        if material.identity.role != COMPONENT:
            raise ConfigError(
                "server.tls.cert",
                f"certifies role {material.identity.role!r}, not 'cortex' "
                f"({material.identity.spiffe_id})",
            )
        self.identity = material.identity
        self.store = open_store(config, CheckpointSigner.from_tls(material))
        try:
            self.ingest = Ingest(
                self.store,
                config.guardians,
                config.ingest,
                tls=config.server.tls,
                own=OwnIdentity.of(material.identity),
                dial=dial,
            )
            self.server = ComponentServer(config.server, component=COMPONENT)
            try:
                self.server.add_service(_servicer_binding(self.store, self.ingest.tracker))
                self.api = True
            except LookupError as exc:
                log_event(_log, "serving health and reflection only", reason=str(exc))
                self.api = False
        except BaseException:
            self.store.close()
            raise
        self._stopped = False

    @property
    def directory(self) -> GuardianDirectory:
        return self.ingest.tracker

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> int:
        await self.ingest.start()
        return await self.server.start()

    async def stop(self) -> None:
        """Drain the API, stop ingest, close the store (a last signed checkpoint). Idempotent,
        and safe after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await self.server.stop()
        finally:
            try:
                await self.ingest.stop()
            finally:
                await asyncio.to_thread(self.store.close)

    def reload(self) -> None:
        """Re-read the configuration file and follow its guardian list (SIGHUP). A file that
        does not load keeps the current list (logged); other changed sections need a restart."""
        if self.config_path is None:
            log_event(_log, "reload ignored: no configuration file", level=logging.WARNING)
            return
        try:
            new = load_cortex_config(self.config_path)
            self.ingest.reload(new.guardians)
        except (MeshError, ValueError, OSError) as exc:
            log_event(
                _log,
                "reload refused; the guardian list is unchanged",
                level=logging.ERROR,
                error=str(exc),
            )
            return
        if dataclasses.replace(new, guardians=self.config.guardians) != self.config:
            log_event(
                _log,
                "only [[guardians]] is reloaded; restart for the other changes",
                level=logging.WARNING,
            )
        self.config = dataclasses.replace(self.config, guardians=new.guardians)
