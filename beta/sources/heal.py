"""Healing as a guardian worker: the vault, the healer, and the FIM changes that feed them.

Enabled when a [[fim.paths]] rule has `heal = "auto"` or `"approve"`; the vault then holds
copies of the files below those rules only. One thread does the work, in order: once FIM runs
(its baseline verified) it captures known-good copies of the healable files into the vault
(again whenever the baseline's version changes), then takes FIM changes from a queue:
`auto` heals at once, `approve` queues a proposal (its PROPOSED `heal_action` event refers to
the `file_integrity` event that triggered it), `never` never gets here. Undecided proposals
expire on the same thread. BetaService decisions (`approve`, `reject`) run on the caller's
thread; the healer serializes them with the queued work.

The vault is verified (every copy opened and re-hashed, `Vault.verify`) when the worker starts
and every `[heal] vault_verify_interval`: each bad copy is a `file_integrity` event (change
VAULT_COPY_TAMPERED), is quarantined, and is captured again from the live file when that still
matches the baseline. The heal sensor is DEGRADED while the last verification found bad copies,
while a heal of some path has failed (until a later heal of it is verified), or while a file
could not be captured; a vault index that does not verify makes it FAILED.

Every heal step is a `heal_action` event. Beta's own restores are announced to FIM first
(`FimSource.suppress`), so they raise no `file_integrity` event, and the candidate file the
healer writes beside its target is excluded from FIM (`with_heal_exclude`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from beta.config import BetaConfig, HealSection
from beta.errors import BetaError, BetaNotFoundError
from beta.fim import Change, FimConfig
from beta.heal import (
    HEAL_TEMP_GLOB,
    BackoffConfig,
    HealConfig,
    Healer,
    HealProposal,
    HealRecord,
    HealState,
    ValidatorRule,
    fim_policy,
)
from beta.heal.convert import bad_copy_to_event, record_to_event
from beta.sources.fim import FimSource
from beta.vault import Vault, VaultConfig, VaultTamperedError
from beta.vault.store import INDEX_FILE
from crypto.keyring import KeyManager
from mesh.guardian.sensors import SensorHandle, SensorRegistry, SensorState
from mesh.logs import log_event
from qsc.common.v1 import event_pb2

__all__ = ["HealSource", "heal_roots", "with_heal_exclude"]

_log = logging.getLogger("qsc.beta.heal")
_EXPIRE_EVERY: Final = 60.0  # seconds between sweeps of undecided proposals
_POLL: Final = 0.5
_MAX_REASONS: Final = 6  # reasons shown on the sensor; the rest are counted

EmitMany = Callable[[Sequence[event_pb2.Event]], tuple[int, int]]


def heal_roots(fim: FimConfig) -> tuple[Path, ...]:
    """The roots of the rules that heal: the only places the vault may store or restore."""
    return tuple(r.path for r in fim.paths if r.heal != "never")


def with_heal_exclude(fim: FimConfig) -> FimConfig:
    """FIM must not report the healer's candidate file (written beside its target)."""
    if not heal_roots(fim) or HEAL_TEMP_GLOB in fim.exclude:
        return fim
    return dataclasses.replace(fim, exclude=(*fim.exclude, HEAL_TEMP_GLOB))


def heal_config(section: HealSection, state_directory: Path) -> HealConfig:
    return HealConfig(
        state_dir=state_directory / "heal",
        validators=tuple(ValidatorRule(v.path, v.command, v.timeout) for v in section.validators),
        approval_ttl=section.approval_ttl,
        backoff=BackoffConfig(
            initial=section.backoff_initial,
            maximum=section.backoff_max,
            max_attempts=section.max_attempts,
        ),
        max_proposals=section.max_proposals,
    )


class HealSource:
    """The heal worker; see the module docstring."""

    name: Final = "heal"

    def __init__(
        self,
        config: BetaConfig,
        keys: KeyManager,
        fim: FimSource,
        emit_many: EmitMany,
        sensors: SensorRegistry,
    ) -> None:
        self._config = config
        self._keys = keys
        self._fim = fim
        self._emit_many = emit_many
        self._sensors = sensors
        self._roots = heal_roots(config.fim)
        self._healer: Healer | None = None
        self._vault: Vault | None = None
        self._handle: SensorHandle | None = None
        self._work: queue.Queue[tuple[Change, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced_version = 0  # the baseline version the vault was last synced with
        # What keeps the sensor DEGRADED (see the module docstring); guarded by _status.
        self._status = threading.Lock()
        self._sync_failed: tuple[str, ...] = ()
        self._bad_copies: tuple[str, ...] = ()
        self._failed_heals: dict[str, str] = {}
        self._index_bad: str | None = None
        self._synced_once = False

    @property
    def enabled(self) -> bool:
        return bool(self._roots)

    # --- worker -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        section = self._config.heal
        # DEGRADED until the vault holds copies matching a trusted baseline.
        self._handle = self._sensors.register(
            "heal",
            mode="vault",
            state=SensorState.DEGRADED,
            reasons=("waiting for a trusted baseline to sync the vault",),
        )
        try:
            vault = Vault(
                VaultConfig(
                    section.vault_directory,
                    roots=self._roots,
                    versions=section.vault_versions,
                    max_bytes=section.vault_max_bytes,
                ),
                self._keys,
            )
        except BetaError as exc:  # a tampered vault index: nothing can be restored from it
            if isinstance(exc, VaultTamperedError):
                self._index_event(section.vault_directory, exc)
            self._handle.failed(f"vault unusable: {exc}", mode="stopped")
            return
        try:
            self._healer = Healer(
                heal_config(section, self._config.state.directory),
                vault,
                self._fim.baseline,
                self._keys,
                policy=fim_policy(self._config.fim),
                suppress=self._fim.suppress,
                on_record=self._on_record,
            )
        except BetaError as exc:  # tampered heal state (queue or loop-guard ledger)
            vault.close()
            self._handle.failed(f"heal state unusable: {exc}", mode="stopped")
            return
        self._vault = vault
        self._thread = threading.Thread(target=self._loop, name="beta-heal", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        if self._vault is not None:
            self._vault.close()

    def on_tamper(self, change: Change, event: event_pb2.Event) -> None:
        """A FIM change on a healable path (on a FIM thread): queued, handled in order."""
        if self._healer is not None:
            self._work.put((change, event.id))

    def _loop(self) -> None:
        healer = self._healer
        assert healer is not None
        next_expire = time.monotonic() + _EXPIRE_EVERY
        interval = self._config.heal.vault_verify_interval.total_seconds()
        next_verify = time.monotonic()  # at once: before any heal needs a copy
        while not self._stop.is_set():
            if time.monotonic() >= next_verify:
                self.verify_vault()
                next_verify = time.monotonic() + interval
            if not self._fim.started.is_set():
                self._stop.wait(_POLL)  # no trusted baseline yet: nothing to heal to
                continue
            self._sync_if_needed(healer)
            try:
                change, event_id = self._work.get(timeout=_POLL)
            except queue.Empty:
                pass
            else:
                self._handle_change(healer, change, event_id)
            if time.monotonic() >= next_expire:
                next_expire = time.monotonic() + _EXPIRE_EVERY
                healer.expire()

    def _sync_if_needed(self, healer: Healer) -> None:
        try:
            version = self._fim.baseline().version
        except BetaError:
            return
        if version == self.synced_version:
            return
        result = healer.sync_vault()
        self.synced_version = version
        with self._status:
            self._synced_once = True
            # A file that is not as the baseline says cannot be captured: it cannot be healed.
            self._sync_failed = tuple(f"no vault copy of {p}: {why}" for p, why in result.failed)
        log_event(
            _log,
            "vault synced with the baseline",
            baseline_version=version,
            captured=len(result.captured),
            unchanged=result.unchanged,
            failed=len(result.failed),
        )
        self._report()

    def verify_vault(self) -> None:
        """Open every vault copy; report, quarantine and re-capture the bad ones (worker thread;
        public so tests and an operator-triggered check can run it)."""
        vault = self._vault
        if vault is None:
            return
        try:
            result = vault.verify(stop=self._stop.is_set)
        except VaultTamperedError as exc:
            self._index_event(vault.config.directory, exc)
            with self._status:
                self._index_bad = f"vault index failed verification ({exc.reason})"
            self._report()
            return
        now = time.time()
        if result.bad:
            self._emit_many(
                [
                    bad_copy_to_event(
                        b.record.path, b.record.version, b.record.blake3, b.reason, now
                    )
                    for b in result.bad
                ]
            )
            if self._handle is not None:
                self._handle.count_event(len(result.bad))
            vault.quarantine(result.bad)
            self.synced_version = 0  # capture them again from live files that match
        log_event(
            _log,
            "vault verified",
            level=logging.ERROR if result.bad else logging.INFO,
            checked=result.checked,
            bad=len(result.bad),
            paths=sorted({b.record.path for b in result.bad})[:16] or None,
        )
        with self._status:
            self._index_bad = None
            self._bad_copies = tuple(
                f"vault copy v{b.record.version} of {b.record.path} failed verification "
                f"({b.reason}); quarantined"
                for b in result.bad
            )
        self._report()

    def _index_event(self, directory: Path, exc: VaultTamperedError) -> None:
        path = str(directory / INDEX_FILE)
        self._emit_many([bad_copy_to_event(path, 0, b"", exc.reason, time.time())])
        log_event(_log, "vault index failed verification", level=logging.ERROR, reason=exc.reason)

    def _report(self) -> None:
        """Set the sensor from what is wrong now (the module docstring lists it)."""
        if self._handle is None:
            return
        with self._status:
            if self._index_bad is not None:
                self._handle.failed(self._index_bad)
                return
            reasons = [
                *self._bad_copies,
                *(f"heal of {p} failed: {why}" for p, why in sorted(self._failed_heals.items())),
                *self._sync_failed,
            ]
            if reasons:
                more = len(reasons) - _MAX_REASONS
                shown = reasons[:_MAX_REASONS] + ([f"and {more} more"] if more > 0 else [])
                self._handle.degraded(*shown)
            elif self._synced_once:
                self._handle.healthy()

    def _handle_change(self, healer: Healer, change: Change, event_id: str) -> None:
        try:
            healer.on_change(change, event_id)
        except BetaError as exc:  # e.g. the baseline has no regular file there
            log_event(
                _log,
                "heal not started",
                level=logging.WARNING,
                path=change.path,
                reason=str(exc),
            )

    def _on_record(self, record: HealRecord) -> None:
        self._emit_many([record_to_event(record)])
        if self._handle is not None:
            self._handle.count_event()
        if record.state in (HealState.FAILED, HealState.VERIFIED):
            with self._status:
                if record.state is HealState.FAILED:
                    self._failed_heals[record.path] = record.failure_reason or "failed"
                else:
                    self._failed_heals.pop(record.path, None)
            self._report()
        log_event(
            _log,
            "heal",
            level=logging.WARNING if record.state is HealState.FAILED else logging.INFO,
            path=record.path,
            state=record.state.value,
            policy=record.policy,
            reason=record.failure_reason or None,
        )

    # --- for the servicer ---------------------------------------------------------------------

    def _need(self) -> Healer:
        if self._healer is None:
            if not self.enabled:
                raise BetaNotFoundError(
                    "no heal proposals: healing is not configured (no [[fim.paths]] has heal = "
                    '"auto" or "approve")'
                )
            raise BetaNotFoundError("no heal proposals: healing is stopped (see the heal sensor)")
        return self._healer

    def list_proposals(
        self, states: tuple[HealState, ...], page_size: int, page_token: str
    ) -> tuple[tuple[HealProposal, ...], str]:
        if self._healer is None:
            return (), ""
        return self._healer.list_proposals(states, page_size=page_size, page_token=page_token)

    def approve(self, proposal_id: str, actor: str, comment: str, expected: bytes) -> HealProposal:
        return self._need().approve(proposal_id, actor, comment, expected)

    def reject(self, proposal_id: str, actor: str, comment: str) -> HealProposal:
        return self._need().reject(proposal_id, actor, comment)
