"""The serving model and its hot replacement.

`ModelRegistry.current` is one attribute holding an immutable `LoadedModel`. A request reads it
once and scores with that model to the end, so swapping in a new model (one reference
assignment, atomic under the GIL) never disturbs a call in flight, and never mixes two models in
one batch. `refresh()` looks for the newest card in the directory (`ml.store.newest`), and when
it is not the serving version, authenticates and loads it, then swaps. A model that fails to load
is logged once (until its card changes) and the serving model stays. `watch()` runs `refresh()`
off the event loop every poll interval, or at once when `wake()` is called (SIGHUP).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from crypto.aead import AeadKey
from mesh.logs import log_event
from ml.errors import MlError, ModelIntegrityError, NoModelError
from ml.scorer import LoadedModel
from ml.store import CreatedCache, KeySource, load_model, newest

_log = logging.getLogger("qsc.ml.registry")


class ModelRegistry:
    """The model directory, and the model serving from it."""

    def __init__(
        self,
        directory: Path,
        keys: KeySource | Mapping[str, AeadKey],
        *,
        threads: int = 1,
    ) -> None:
        self.directory = directory
        self._keys = keys
        self._threads = threads
        self._current: LoadedModel | None = None
        self._failed: dict[str, tuple[int, int, int]] = {}  # version -> card stamp that failed
        self._created: CreatedCache = {}
        self._lock = threading.Lock()  # one refresh at a time (watcher and SIGHUP)
        self._wake = asyncio.Event()
        self.swaps = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NoModelError("no model loaded yet")
        return model

    def load_initial(self) -> LoadedModel:
        """Load the newest model or raise (MlError naming the file): a service must not start
        on a model it cannot authenticate."""
        self.refresh(strict=True)
        return self.require()

    def refresh(self, *, strict: bool = False) -> bool:
        """Swap in the newest model if it is not serving; True when a swap happened."""
        with self._lock:
            try:
                found = newest(self.directory, self._created)
            except MlError as exc:
                if strict:
                    raise
                log_event(_log, "model directory unusable", level=logging.ERROR, error=str(exc))
                return False
            current = self._current
            if current is not None and found.version == current.version:
                return False
            if not strict and self._failed.get(found.version) == found.stamp:
                return False  # already reported; wait for the card to change
            try:
                stored = load_model(self.directory, found.version, self._keys)
                model = LoadedModel(
                    stored, threads=self._threads, loaded_at=dt.datetime.now(dt.UTC)
                )
            except ModelIntegrityError as exc:
                self._failed[found.version] = found.stamp
                if strict:
                    raise
                log_event(
                    _log,
                    "model refused; still serving the previous one",
                    level=logging.ERROR,
                    version=found.version,
                    error=str(exc),
                    serving=None if current is None else current.version,
                )
                return False
            self._current = model
            self.swaps += 1
            self._failed.pop(found.version, None)
            log_event(
                _log,
                "model serving",
                version=model.version,
                previous=None if current is None else current.version,
                features=len(model.features),
                trees=model.card.n_estimators,
                threshold=model.threshold,
            )
            return True

    def wake(self) -> None:
        """Ask the watcher to look now (from the event loop thread, e.g. a SIGHUP handler)."""
        self._wake.set()

    async def watch(self, interval: dt.timedelta, stop: asyncio.Event) -> None:
        """Refresh every `interval` (or on `wake()`) until `stop` is set."""
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(
                waiters, timeout=interval.total_seconds(), return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()
            if stop.is_set():
                return
            self._wake.clear()
            try:
                # Off the loop: loading builds an onnxruntime session (milliseconds to seconds).
                await asyncio.to_thread(self.refresh)
            except Exception:  # a bug must not end the watcher; calls keep the current model
                log_event(_log, "model refresh failed", level=logging.ERROR, exc_info=True)
