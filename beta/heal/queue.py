"""Heal proposals waiting for an operator (policy `approve`), persisted across restarts.

A proposal is PROPOSED until approved (APPROVED, then the healer records the outcome: VERIFIED
or FAILED) or rejected (REJECTED). Approval windows expire: approving after `expire_time` fails
with `HealExpiredError` and the proposal becomes REJECTED with comment "expired". One pending
proposal per (path, baseline version): a file tampered again while its proposal waits updates
that proposal instead of queueing another. The queue keeps at most `max_proposals`, dropping
the oldest decided ones first. Every change is written through (`SealedStateFile`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from beta.errors import BetaError, BetaInvalidArgumentError, BetaNotFoundError
from beta.fim.config import HealPolicyName
from beta.heal.model import HealProposal, HealRecord, HealState
from beta.heal.sealed_doc import HealStateTamperedError, SealedStateFile
from crypto.keyring import KeyManager
from mesh.errors import FailedPreconditionError

__all__ = ["HealConflictError", "HealExpiredError", "HealQueue"]

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
EXPIRED_COMMENT: Final = "expired: no decision before the approval window closed"


class HealConflictError(BetaError, FailedPreconditionError):
    """The proposal is not in a state that allows this (already decided, content changed...)."""


class HealExpiredError(HealConflictError):
    """The approval window of the proposal has closed; it is now rejected as expired."""


class HealQueue:
    """See the module docstring. Thread-safe."""

    def __init__(
        self,
        path: Path,
        keys: KeyManager,
        *,
        ttl: timedelta = timedelta(hours=24),
        max_proposals: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError("approval ttl must be positive")
        if max_proposals < 1:
            raise ValueError("max_proposals must be at least 1")
        self._file = SealedStateFile(path, keys, "heal-queue")
        self._ttl = ttl.total_seconds()
        self._max = max_proposals
        self._clock = clock
        self._lock = threading.RLock()
        self._items: dict[str, HealProposal] = {}
        doc = self._file.load()
        if doc is not None:
            try:
                items = [HealProposal.from_json(d) for d in doc["proposals"]]
            except (KeyError, TypeError, ValueError):
                raise HealStateTamperedError(f"{path}: malformed proposals") from None
            self._items = {p.id: p for p in items}

    @property
    def path(self) -> Path:
        return self._file.path

    # -- queries --

    def get(self, proposal_id: str) -> HealProposal:
        with self._lock:
            p = self._items.get(proposal_id)
            if p is None:
                raise BetaNotFoundError(f"no heal proposal {proposal_id!r}")
            return p

    def pending(self, path: str, baseline_version: int | None = None) -> HealProposal | None:
        """The PROPOSED proposal for `path` (and baseline version, if given), if any."""
        with self._lock:
            for p in self._items.values():
                if (
                    p.path == path
                    and p.state is HealState.PROPOSED
                    and (baseline_version is None or p.baseline_version == baseline_version)
                ):
                    return p
            return None

    # -- changes --

    def propose(
        self,
        path: str,
        *,
        baseline_version: int,
        baseline_blake3: bytes,
        current_blake3: bytes = b"",
        policy: HealPolicyName = "approve",
        trigger_event_id: str = "",
    ) -> HealProposal:
        """Queue a heal of `path` (or refresh the pending one for the same baseline version)."""
        with self._lock:
            now = self._clock()
            existing = self.pending(path, baseline_version)
            if existing is not None and now <= existing.expire_time:
                p = existing.evolve(
                    current_blake3=current_blake3,
                    trigger_event_id=trigger_event_id or existing.trigger_event_id,
                    update_time=now,
                )
            else:
                if existing is not None:
                    self._expire_one(existing, now)
                p = HealProposal(
                    id=str(uuid.uuid4()),
                    path=path,
                    state=HealState.PROPOSED,
                    policy=policy,
                    baseline_version=baseline_version,
                    baseline_blake3=baseline_blake3,
                    current_blake3=current_blake3,
                    create_time=now,
                    update_time=now,
                    expire_time=now + self._ttl,
                    trigger_event_id=trigger_event_id,
                )
            self._put(p)
            return p

    def approve(self, proposal_id: str, approver: str, comment: str = "") -> HealProposal:
        """PROPOSED -> APPROVED. HealExpiredError past the window (the proposal is then
        rejected as expired), HealConflictError if already decided."""
        with self._lock:
            p = self._decidable(proposal_id)
            return self._put(
                p.evolve(
                    state=HealState.APPROVED,
                    actor=approver,
                    comment=comment,
                    update_time=self._clock(),
                )
            )

    def reject(self, proposal_id: str, approver: str, reason: str = "") -> HealProposal:
        """PROPOSED -> REJECTED: the file is left as it is."""
        with self._lock:
            p = self._decidable(proposal_id)
            return self._put(
                p.evolve(
                    state=HealState.REJECTED,
                    actor=approver,
                    comment=reason,
                    update_time=self._clock(),
                )
            )

    def record(self, proposal_id: str, action: HealRecord) -> HealProposal:
        """The healer's outcome of an approved proposal (APPLIED, VERIFIED or FAILED)."""
        with self._lock:
            p = self.get(proposal_id)
            if p.state is not HealState.APPROVED:
                raise HealConflictError(f"heal proposal {proposal_id} is {p.state.value}")
            return self._put(
                p.evolve(state=action.state, last_action=action, update_time=self._clock())
            )

    def expire(self) -> tuple[HealProposal, ...]:
        """Reject every PROPOSED proposal past its window; returns them."""
        with self._lock:
            now = self._clock()
            due = [
                p
                for p in self._items.values()
                if p.state is HealState.PROPOSED and now > p.expire_time
            ]
            return tuple(self._expire_one(p, now) for p in due)

    # -- internals --

    def _decidable(self, proposal_id: str) -> HealProposal:
        p = self.get(proposal_id)
        if p.state is not HealState.PROPOSED:
            raise HealConflictError(
                f"heal proposal {proposal_id} is already {p.state.value}"
                + (f" by {p.actor}" if p.actor else "")
            )
        now = self._clock()
        if now > p.expire_time:
            self._expire_one(p, now)
            raise HealExpiredError(
                f"heal proposal {proposal_id} expired {now - p.expire_time:.0f}s ago; "
                "it was rejected. The next tampering of the file proposes again"
            )
        return p

    def _expire_one(self, p: HealProposal, now: float) -> HealProposal:
        return self._put(
            p.evolve(state=HealState.REJECTED, comment=EXPIRED_COMMENT, update_time=now)
        )

    def _put(self, p: HealProposal) -> HealProposal:
        items = dict(self._items)
        items[p.id] = p
        if len(items) > self._max:
            decided = sorted(
                (q for q in items.values() if q.state.final and q.id != p.id),
                key=lambda q: (q.update_time, q.id),
            )
            for q in decided[: len(items) - self._max]:
                del items[q.id]
        self._save(items)
        self._items = items
        return p

    def _save(self, items: dict[str, HealProposal]) -> None:
        doc: dict[str, Any] = {"proposals": [p.to_json() for p in items.values()]}
        self._file.save(doc)

    # Last in the class body: the name `list` would otherwise shadow the builtin in the
    # annotations of the methods below it.
    def list(
        self,
        states: Collection[HealState] = (),
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[tuple[HealProposal, ...], str]:
        """(proposals newest first, next page token or ""). `page_token` is the last id of
        the previous page; `page_size` 0 means 100, capped at 1000."""
        size = DEFAULT_PAGE if page_size <= 0 else min(page_size, MAX_PAGE)
        with self._lock:
            ordered = sorted(
                (p for p in self._items.values() if not states or p.state in states),
                key=lambda p: (p.create_time, p.id),
                reverse=True,
            )
        start = 0
        if page_token:
            ids = [p.id for p in ordered]
            if page_token not in ids:
                raise BetaInvalidArgumentError("unknown or stale page token")
            start = ids.index(page_token) + 1
        page = tuple(ordered[start : start + size])
        more = start + size < len(ordered)
        return page, (page[-1].id if more and page else "")
