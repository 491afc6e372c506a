"""The serving model and its hot replacement.

`ModelRegistry.current` is one attribute holding an immutable `LoadedModel`. A request reads it
once and scores with that model to the end, so swapping in a new model (one reference
assignment, atomic under the GIL) never disturbs a call in flight, and never mixes two models in
one batch. `refresh()` looks for the newest card in the directory (`ml.store.newest`), and when
it is not the serving version, authenticates and loads it, then swaps. A model that fails to load
is logged once (until its card changes) and the serving model stays. `watch()` runs `refresh()`
off the event loop every poll interval, or at once when `wake()` is called (SIGHUP).

Rollback: a model older than the directory's floor (ml.revision: the newest model written or
served, sealed in `model-revision`, and kept in memory) is refused with `ModelRollbackError`,
logged at ERROR and reported as `refused` (GetModel's `refused_version`, `rollback_refused`)
until the newest model is the serving one again. At start, a refused rollback or a record that
does not verify stops the service. The deliberate way back is `qsc-ml promote`, which makes the
chosen version the newest (logged at WARNING when it serves).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crypto.aead import AeadKey
from mesh.logs import log_event
from ml.errors import (
    MlError,
    ModelIntegrityError,
    ModelRollbackError,
    NoModelError,
    RevisionRecordError,
)
from ml.revision import Revision, advance_revision, read_revision, record_path
from ml.scorer import LoadedModel
from ml.store import PURPOSE, CreatedCache, KeySource, StoredModel, load_model, newest

_log = logging.getLogger("qsc.ml.registry")


@dataclass(frozen=True)
class Refusal:
    """The newest model in the directory, refused: why, and whether as a rollback."""

    version: str
    reason: str
    rollback: bool
    time: dt.datetime


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
        if isinstance(keys, Mapping):
            self._decrypt: Mapping[str, AeadKey] = keys
            self._seal_key: AeadKey | None = None
        else:
            self._decrypt, self._seal_key = keys.decryption_keys(PURPOSE), keys.active_key(PURPOSE)
        self._floor: Revision | None = None
        self._refused: Refusal | None = None
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
            if strict:
                self._load_floor()  # a record that does not verify stops the start
            try:
                found = newest(self.directory, self._created)
            except MlError as exc:
                if strict:
                    raise
                log_event(_log, "model directory unusable", level=logging.ERROR, error=str(exc))
                return False
            current = self._current
            if current is not None and found.version == current.version:
                self._clear_refusal(current.version)
                return False
            if not strict and self._failed.get(found.version) == found.stamp:
                return False  # already reported; wait for the card to change
            try:
                stored = load_model(self.directory, found.version, self._keys)
                self._check_floor(stored)
                model = LoadedModel(
                    stored, threads=self._threads, loaded_at=dt.datetime.now(dt.UTC)
                )
            except ModelIntegrityError as exc:
                self._failed[found.version] = found.stamp
                rollback = isinstance(exc, ModelRollbackError)
                self._refused = Refusal(found.version, str(exc), rollback, dt.datetime.now(dt.UTC))
                if strict:
                    raise
                log_event(
                    _log,
                    "model rollback refused; still serving the newest model"
                    if rollback
                    else "model refused; still serving the previous one",
                    level=logging.ERROR,
                    version=found.version,
                    error=str(exc),
                    serving=None if current is None else current.version,
                )
                return False
            self._current = model
            self.swaps += 1
            self._failed.pop(found.version, None)
            self._refused = None
            self._advance(model)
            promoted = model.card.promoted_from
            if promoted is not None:
                # A deliberate rollback (`qsc-ml promote`): allowed, and never quiet.
                log_event(
                    _log,
                    "model serving after a deliberate rollback",
                    level=logging.WARNING,
                    version=model.version,
                    promoted_from=promoted,
                    reason=model.card.doc["promoted"].get("reason"),
                    previous=None if current is None else current.version,
                )
            else:
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

    @property
    def refused(self) -> Refusal | None:
        """The newest model in the directory when it was refused and is still the newest: the
        status GetModel reports (`refused_version`, `rollback_refused`)."""
        return self._refused

    @property
    def floor(self) -> Revision | None:
        """The newest revision this registry has seen (record or served): older is refused."""
        return self._floor

    def _load_floor(self) -> None:
        record = read_revision(self.directory, self._decrypt)
        if record is None:
            if self._floor is None:
                # A first start after upgrading, or the record was deleted: the newest model on
                # disk becomes the floor. Loud, because a deleted record hides a rollback.
                log_event(
                    _log,
                    "no model revision record: rollback protection starts from the newest "
                    "model on disk",
                    level=logging.WARNING,
                    record=str(record_path(self.directory)),
                )
            return
        if self._floor is None or record > self._floor:
            self._floor = record

    def _check_floor(self, stored: StoredModel) -> None:
        revision = Revision.of(stored.card)
        floor = self._floor
        if floor is not None and revision < floor:
            raise ModelRollbackError(
                stored.card_path,
                f"is {revision.describe()}, older than {floor.describe()}, the newest model "
                "this directory has served or been written: refused as a rollback (the newer "
                "model deleted, or an old one put back). To serve it on purpose: `qsc-ml "
                f"promote --models {self.directory} --keyring KEYRING --version "
                f"{revision.version}`",
            )

    def _advance(self, model: LoadedModel) -> None:
        revision = Revision.of(model.card)
        if self._floor is None or revision > self._floor:
            self._floor = revision
        if self._seal_key is None:
            return  # a decryption-only key map: the in-memory floor still holds
        try:
            advance_revision(self.directory, revision, seal_key=self._seal_key, keys=self._decrypt)
        except RevisionRecordError as exc:
            log_event(
                _log,
                "model revision record does not verify; not overwritten",
                level=logging.ERROR,
                error=str(exc),
            )
        except OSError as exc:
            # The in-memory floor still refuses older models; only a restart would not.
            log_event(
                _log,
                "model revision not recorded",
                level=logging.WARNING,
                record=str(record_path(self.directory)),
                error=str(exc),
            )

    def _clear_refusal(self, serving: str) -> None:
        refused = self._refused
        if refused is not None:
            self._refused = None
            log_event(
                _log,
                "model refusal cleared: the serving model is the newest again",
                level=logging.WARNING,
                refused=refused.version,
                serving=serving,
            )

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
