"""The ML service assembled: keyring, model registry, AnomalyService on the mesh server, watcher.

    service = MlService(config)             # keyring opened, newest model authenticated and loaded
    port = await service.start()            # listening; the model directory is watched
    service.registry.wake()                 # look at the model directory now (SIGHUP)
    await service.stop()                    # drain, stop watching

`qsc-ml serve` runs it in mesh.service, which wires SIGTERM/SIGINT to `stop` and SIGHUP to
`registry.wake`.
"""

from __future__ import annotations

import asyncio

from crypto.keyring import KeyManager
from mesh.server import ComponentServer
from ml.config import COMPONENT, MlConfig
from ml.registry import ModelRegistry
from ml.server import AnomalyServicer


class MlService:
    def __init__(self, config: MlConfig, *, keys: KeyManager | None = None) -> None:
        self.config = config
        model = config.model
        self.keys = keys or KeyManager.open(model.keyring, COMPONENT)
        self.registry = ModelRegistry(model.directory, self.keys, threads=model.inference_threads)
        self.registry.load_initial()
        self.server = ComponentServer(config.server, component=COMPONENT)
        self.server.add_service(
            AnomalyServicer(self.registry, max_batch_rows=model.max_batch_rows).binding()
        )
        self._stop_watch = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> int:
        port = await self.server.start()
        self._watcher = asyncio.create_task(
            self.registry.watch(self.config.model.poll_interval, self._stop_watch)
        )
        return port

    async def stop(self) -> None:
        self._stop_watch.set()
        await self.server.stop()
        if self._watcher is not None:
            await self._watcher
