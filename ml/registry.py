"""The serving model and its hot replacement.

`ModelRegistry.current` is one attribute holding an immutable `LoadedModel`. A request reads it
once and scores with that model to the end, so swapping in a new model (one reference
assignment, atomic under the GIL) never disturbs a call in flight, and never mixes two models in
one batch. `refresh()` looks for the newest card in the directory (`ml.store.newest`), and when
it is not the serving card (another version, or the serving version's card sealed again with
another `created`, as `qsc-ml promote` does), authenticates and loads it, then swaps. A model
that fails to load is logged once (until its card changes) and the serving model stays.
`watch()` runs `refresh()` off the event loop every poll interval, or at once when `wake()` is
called (SIGHUP), answering a wake with "model directory checked on request" (INFO) once the
look is done.

Rollback: a model older than the directory's floor (ml.revision: the newest model written or
served, sealed in `model-revision`, and kept in memory) is refused with `ModelRollbackError`,
logged at ERROR and reported as `refused` (GetModel's `refused_version`, `rollback_refused`)
until the newest model is the serving one again. At start, a refused rollback or a record that
does not verify stops the service. The deliberate way back is `qsc-ml promote`, which makes the
chosen version the newest (logged at WARNING when it serves).

Every refresh also reads the record, so the service and the trainer share one floor:
* a newer model the trainer wrote that vanished before the service served it (the floor names a
  version that is not the newest on disk) is reported the same way, refused as a rollback, while
  the current model keeps serving;
* a record deleted, or replaced by an older copy, while the service runs is rewritten from the
  in-memory floor (WARNING), so the next start still knows the newest model;
* a record that stops verifying is logged at ERROR once and left alone; the in-memory floor holds.
Each record problem is logged once, when it appears.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        self._problem: str | None = None  # the record's problem last logged (once each)
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
                self._warn_if_open()
            self._sync_floor(strict=strict)  # strict: a record that does not verify stops
            try:
                found = newest(self.directory, self._created)
            except MlError as exc:
                if strict:
                    raise
                log_event(_log, "model directory unusable", level=logging.ERROR, error=str(exc))
                return False
            current = self._current
            if (
                current is not None
                and found.version == current.version
                and found.created == current.card.created
            ):
                self._check_newest_served(current)
                return False
            # A new version, or the serving version's card sealed again (trained again on the
            # same rows, or promoted): load it as any new card, floor check included.
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
        """What GetModel reports (`refused_version`, `refused_reason`, `rollback_refused`): the
        newest model in the directory while it is refused (failed authentication, or older than
        the floor), or the floor's version while it is missing from the directory."""
        return self._refused

    @property
    def floor(self) -> Revision | None:
        """The newest revision this registry has seen (record or served): older is refused."""
        return self._floor

    def _sync_floor(self, *, strict: bool) -> None:
        """Raise the in-memory floor to the record; rewrite a record gone or older than it."""
        path = str(record_path(self.directory))
        try:
            record = read_revision(self.directory, self._decrypt)
        except RevisionRecordError as exc:
            if strict:
                raise
            self._record_problem(
                "unverified",
                "model revision record does not verify; not overwritten, the floor in memory "
                "still refuses older models, but a restart will stop on it",
                level=logging.ERROR,
                error=str(exc),
            )
            return
        floor = self._floor
        if record is None and floor is None:
            # A first start after upgrading, or the record was deleted while the service was
            # down: the newest model on disk becomes the floor. Loud: that hides a rollback.
            self._record_problem(
                "absent",
                "no model revision record: rollback protection starts from the newest model on "
                "disk",
                level=logging.WARNING,
                record=path,
            )
            return
        if floor is not None and (record is None or record < floor) and self._seal_key is not None:
            # Deleted, or an older copy put back, while this service knew better: put it right.
            error = self._write_floor(floor)
            message = (
                "model revision record missing or older than the newest model this service has "
                "seen (deleted or restored from a copy?); "
            )
            where: dict[str, Any] = {
                "record": path,
                "found": None if record is None else record.describe(),
                "floor": floor.describe(),
            }
            if error is None:  # put right: each time it happens is worth a line
                self._problem = None
                log_event(_log, message + "rewritten", level=logging.WARNING, **where)
            else:
                self._record_problem(
                    "unwritten",
                    message + "and it cannot be rewritten",
                    level=logging.WARNING,
                    error=error,
                    **where,
                )
            return
        if record is not None and (floor is None or record > floor):
            self._floor = record
        self._problem = None

    def _record_problem(self, kind: str, message: str, *, level: int, **fields: Any) -> None:
        """Log a problem with the record once, when it appears (not at every poll)."""
        if self._problem != kind:
            self._problem = kind
            log_event(_log, message, level=level, **fields)

    def _warn_if_open(self) -> None:
        try:
            mode = stat.S_IMODE(os.stat(self.directory).st_mode)
        except OSError:
            return  # `newest` says what is wrong with it
        if mode & 0o077:
            # Models show what scores normal; `qsc-ml train` tightens it, the service only warns.
            log_event(
                _log,
                "model directory is open to group or others; it should be 0700",
                level=logging.WARNING,
                directory=str(self.directory),
                mode=f"{mode:04o}",
            )

    def _check_newest_served(self, current: LoadedModel) -> None:
        """The newest card on disk is serving: is it also the newest the floor knows of?"""
        floor = self._floor
        if floor is None or floor.version == current.version or floor <= Revision.of(current.card):
            self._clear_refusal(current.version)
            return
        refused = self._refused
        if refused is not None and refused.version == floor.version:
            return  # reported
        # A newer model was written (the record names it) but is not on disk any more: deleted
        # before this service served it. What is left is older: keep serving what serves.
        reason = (
            f"{floor.describe()} is the newest model this directory has had (its "
            f"{record_path(self.directory).name} record), but it is gone: deleted or replaced "
            f"by an older copy. Still serving {Revision.of(current.card).describe()}, which "
            "is older. Put the newest back, train a new one, or `qsc-ml promote` one on purpose"
        )
        self._refused = Refusal(floor.version, reason, True, dt.datetime.now(dt.UTC))
        log_event(
            _log,
            "newest model missing: rollback refused; still serving the model loaded",
            level=logging.ERROR,
            missing=floor.version,
            serving=current.version,
        )

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
                f"{revision.version} --reason TEXT`",
            )

    def _advance(self, model: LoadedModel) -> None:
        revision = Revision.of(model.card)
        if self._floor is None or revision > self._floor:
            self._floor = revision
        error = self._write_floor(self._floor)
        if error is not None:
            # The in-memory floor still refuses older models; a restart would not know it.
            self._record_problem(
                "unwritten",
                "model revision not recorded",
                level=logging.WARNING,
                floor=self._floor.describe(),
                error=error,
            )

    def _write_floor(self, floor: Revision) -> str | None:
        """Record `floor` (when above the record); why it could not be, or None."""
        if self._seal_key is None:
            return None  # a decryption-only key map: the in-memory floor still holds
        try:
            advance_revision(self.directory, floor, seal_key=self._seal_key, keys=self._decrypt)
        except RevisionRecordError as exc:
            return str(exc)  # does not verify: never overwritten
        except OSError as exc:
            return f"{record_path(self.directory)}: cannot be written ({exc.strerror or exc})"
        return None

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
            requested = self._wake.is_set()
            self._wake.clear()
            try:
                # Off the loop: loading builds an onnxruntime session (milliseconds to seconds).
                swapped = await asyncio.to_thread(self.refresh)
            except Exception:  # a bug must not end the watcher; calls keep the current model
                log_event(_log, "model refresh failed", level=logging.ERROR, exc_info=True)
                continue
            if requested:
                # An operator's SIGHUP gets an answer, after whatever the look itself logged.
                current, refused = self._current, self._refused
                log_event(
                    _log,
                    "model directory checked on request",
                    swapped=swapped,
                    serving=None if current is None else current.version,
                    refused=None if refused is None else refused.version,
                )
