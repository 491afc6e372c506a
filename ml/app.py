"""The ML service assembled: keyring, model registry, AnomalyService on the mesh server, watcher.

    service = MlService(config)             # keyring opened, newest model authenticated and loaded
    port = await service.start()            # listening; the model directory is watched
    await service.run(on_listening)         # or: start, serve until SIGTERM/SIGINT, stop

SIGHUP makes the watcher look at the model directory at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

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

    async def run(self, on_listening: Callable[[int], None] | None = None) -> None:
        port = await self.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, self.registry.wake)
        if on_listening is not None:
            on_listening(port)
        try:
            await self.server.run()
        finally:
            await self.stop()
