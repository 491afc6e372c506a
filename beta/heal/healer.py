"""Healing: restore a tampered file from its vault copy, safely, once, and say what happened.

`Healer.heal(path)`:

1. the authenticated baseline names a regular file with a BLAKE3 hash at `path`;
2. the loop guard allows another attempt for (path, baseline version) (`beta.heal.guard`);
3. the vault copy whose hash equals the baseline's is read and verified (`Vault.find`), and its
   plaintext re-hashed against the baseline (constant-time);
4. the candidate is written to ``.<name>.<random>.qsc-heal`` in the target's own directory,
   reached by a symlink-free directory-fd walk, created O_EXCL|O_NOFOLLOW; owner, mode and
   extended attributes are set on it (owner first: chown clears set-id bits and capabilities)
   and checked, then it is fsynced;
5. the validator configured for the path, if any, runs on the candidate; a rejection removes
   the candidate and nothing is swapped;
6. the FIM monitor is told to expect the baseline hash at `path` (`suppress`), the candidate is
   renamed over the target (renameat on the same directory fd) and the directory fsynced;
7. the result is re-hashed through the same directory fd and compared with the baseline:
   VERIFIED, or FAILED with the reason.

Every outcome is a `HealRecord` passed to `on_record` (the runtime converts it with
`beta.heal.convert.record_to_event`). Policies per path: `auto` heals at once, `approve` queues
a proposal (`HealQueue`) that `approve()` applies or `reject()` drops, `never` only reports.

The candidate lives in the watched directory: the FIM configuration must exclude
`HEAL_TEMP_GLOB` (`with_heal_exclude(fim_config)`) or the monitor reports the candidate itself
while the validator runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hmac
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

import blake3 as _blake3

from beta.errors import BetaError
from beta.fim.baseline import Baseline, Change, ChangeKind, Entry
from beta.fim.config import FimConfig, HealPolicyName
from beta.fim.metadata import (
    CAPABILITY_XATTR,
    VOLATILE_FIELDS,
    FileMeta,
    FileType,
    read_xattrs,
)
from beta.heal.guard import BackoffConfig, LoopGuard
from beta.heal.model import HealProposal, HealRecord, HealState, ValidatorResult
from beta.heal.queue import HealConflictError, HealExpiredError, HealQueue
from beta.heal.validate import ValidatorRule, run_validator
from beta.vault.safefs import UnsafePathError, check_path, open_parent
from beta.vault.store import Vault
from crypto.files import fsync_directory, make_private_dirs
from crypto.hashing import blake3_256
from crypto.keyring import KeyManager

__all__ = [
    "HEAL_TEMP_GLOB",
    "HEAL_TEMP_SUFFIX",
    "HealConfig",
    "Healer",
    "VaultSync",
    "fim_policy",
    "with_heal_exclude",
]

_log = logging.getLogger("qsc.beta.heal")

HEAL_TEMP_SUFFIX: Final = ".qsc-heal"
HEAL_TEMP_GLOB: Final = ".*" + HEAL_TEMP_SUFFIX
QUEUE_FILE: Final = "heal-queue.qsc"
GUARD_FILE: Final = "heal-guard.qsc"
_HEALABLE: Final = frozenset(
    {ChangeKind.CONTENT_CHANGED, ChangeKind.DELETED, ChangeKind.METADATA_CHANGED}
)
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

SuppressHook = Callable[[str, bytes | None], None]
PolicyFn = Callable[[str], HealPolicyName]
OnRecord = Callable[[HealRecord], None]


@dataclass(frozen=True)
class HealConfig:
    """Where heal state lives and how healing behaves (policies come from the FIM rules)."""

    state_dir: Path  # heal-queue.qsc and heal-guard.qsc
    validators: tuple[ValidatorRule, ...] = ()  # the first matching rule applies
    approval_ttl: timedelta = timedelta(hours=24)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    max_proposals: int = 1000
    max_output: int = 4096  # validator output kept in the record

    def __post_init__(self) -> None:
        if not os.fspath(self.state_dir).startswith("/"):
            raise ValueError("heal state_dir must be absolute")
        if not 64 <= self.max_output <= 1 << 20:
            raise ValueError("max_output must be 64 B..1 MiB")

    def validator_for(self, path: str) -> ValidatorRule | None:
        for rule in self.validators:
            if rule.matches(path):
                return rule
        return None


def with_heal_exclude(fim: FimConfig) -> FimConfig:
    """`fim` excluding the heal's candidate files (the monitor would report them otherwise)."""
    if HEAL_TEMP_GLOB in fim.exclude:
        return fim
    return dataclasses.replace(fim, exclude=(*fim.exclude, HEAL_TEMP_GLOB))


def fim_policy(fim: FimConfig) -> PolicyFn:
    """The heal policy of the FIM rule that records a file (`never` outside every rule)."""

    def policy(path: str) -> HealPolicyName:
        rule = fim.covers(path, is_dir=False)
        return rule.heal if rule is not None else "never"

    return policy


@dataclass(frozen=True)
class VaultSync:
    """What `Healer.sync_vault` did."""

    captured: tuple[str, ...] = ()
    unchanged: int = 0
    failed: tuple[tuple[str, str], ...] = ()  # (path, reason)


@dataclass(frozen=True)
class _Live:
    digest: bytes | None  # None: missing or not a regular file
    meta: FileMeta | None  # None: missing


class _CandidateError(Exception):
    """The candidate could not be given the baseline's metadata."""


def _observe_at(dir_fd: int, name: str) -> _Live:
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return _Live(None, None)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return _Live(None, FileMeta.from_stat(st))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _Live(None, FileMeta.from_stat(st))
        h = _blake3.blake3()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return _Live(bytes(h.digest()), FileMeta.from_stat(st, xattrs=read_xattrs(fd)))
    finally:
        os.close(fd)


def _meta_matches(want: FileMeta, got: FileMeta) -> bool:
    return (
        got.file_type is FileType.REGULAR
        and (got.mode, got.uid, got.gid) == (want.mode, want.uid, want.gid)
        and got.xattrs == want.xattrs
    )


def _matches(entry: Entry, live: _Live) -> bool:
    return (
        live.digest is not None
        and live.meta is not None
        and entry.blake3 is not None
        and hmac.compare_digest(live.digest, entry.blake3)
        and _meta_matches(entry.meta, live.meta)
    )


def _set_xattrs(fd: int, wanted: tuple[tuple[str, bytes], ...]) -> None:
    want = dict(wanted)
    try:
        present = os.listxattr(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        present = []
    for name in present:
        if name not in want:
            os.removexattr(fd, name)
    for name in sorted(want, key=lambda n: n == CAPABILITY_XATTR):  # capabilities last
        os.setxattr(fd, name, want[name])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Healer:
    """See the module docstring. Thread-safe: one heal or decision at a time."""

    def __init__(
        self,
        config: HealConfig,
        vault: Vault,
        baseline: Callable[[], Baseline],
        keys: KeyManager,
        *,
        policy: PolicyFn | None = None,
        suppress: SuppressHook | None = None,
        on_record: OnRecord | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.vault = vault
        self._baseline = baseline
        self._policy = policy
        self._suppress = suppress
        self._on_record = on_record
        self._clock = clock
        self._lock = threading.RLock()
        make_private_dirs(config.state_dir)
        self.queue = HealQueue(
            config.state_dir / QUEUE_FILE,
            keys,
            ttl=config.approval_ttl,
            max_proposals=config.max_proposals,
            clock=clock,
        )
        self.guard = LoopGuard(config.state_dir / GUARD_FILE, keys, config.backoff, clock=clock)

    def policy_for(self, path: str, default: HealPolicyName = "never") -> HealPolicyName:
        return self._policy(path) if self._policy is not None else default

    # -- entry points --

    def on_change(self, change: Change, trigger_event_id: str = "") -> HealRecord | None:
        """React to one FIM change per the path's policy: heal (auto), propose (approve), or
        nothing (never, or not a change of a regular file the baseline knows)."""
        old = change.old
        if (
            change.kind not in _HEALABLE
            or old is None
            or old.meta.file_type is not FileType.REGULAR
        ):
            return None
        if change.kind is ChangeKind.METADATA_CHANGED and all(
            f in VOLATILE_FIELDS for f in change.fields
        ):
            return None
        policy = self.policy_for(change.path, change.heal)
        if policy == "auto":
            return self.heal(change.path, policy="auto", trigger_event_id=trigger_event_id)
        if policy == "approve":
            with self._lock:
                _, record = self._propose(change.path, trigger_event_id)
            return record
        return None

    def heal(
        self,
        path: str,
        *,
        policy: HealPolicyName | None = None,
        trigger_event_id: str = "",
        actor: str = "",
        comment: str = "",
        proposal_id: str = "",
        bypass_guard: bool = False,
    ) -> HealRecord:
        """Heal `path` now (see the module docstring); the final record, also emitted.
        `bypass_guard`: an operator decided (an approval), so the loop guard only counts."""
        with self._lock:
            record = self._heal(
                HealRecord(
                    path=path,
                    state=HealState.FAILED,
                    policy=policy or self.policy_for(path, "auto"),
                    actor=actor,
                    comment=comment,
                    proposal_id=proposal_id,
                    trigger_event_id=trigger_event_id,
                    time=self._clock(),
                ),
                bypass_guard,
            )
        self._emit(record)
        return record

    def propose(self, path: str, trigger_event_id: str = "") -> HealProposal:
        """Queue a heal of `path` for approval (or refresh the one already waiting)."""
        with self._lock:
            proposal, _ = self._propose(path, trigger_event_id)
            if proposal is None:
                raise HealConflictError(f"{path} matches the baseline: nothing to heal")
            return proposal

    def approve(
        self,
        proposal_id: str,
        actor: str,
        comment: str = "",
        expected_current_blake3: bytes = b"",
    ) -> HealProposal:
        """Approve and apply a proposal; the returned proposal carries the outcome in
        `last_action`. HealConflictError if decided already, the baseline moved on, or the
        file is no longer what the approver reviewed; HealExpiredError past the window."""
        with self._lock:
            p = self.queue.get(proposal_id)
            if p.state is HealState.PROPOSED:
                version = self._baseline().version
                if version != p.baseline_version:
                    raise HealConflictError(
                        f"the baseline moved from version {p.baseline_version} to {version} "
                        "since this heal was proposed; it will be proposed again if still needed"
                    )
                if expected_current_blake3:
                    now = self._observe(p.path).digest or b""
                    if not hmac.compare_digest(now, expected_current_blake3):
                        raise HealConflictError(
                            f"{p.path} changed since it was reviewed (expected_current_blake3)"
                        )
            try:
                p = self.queue.approve(proposal_id, actor, comment)
            except HealExpiredError:
                self._emit(self._proposal_record(self.queue.get(proposal_id)))
                raise
            self._emit(self._proposal_record(p))
            record = self.heal(
                p.path,
                policy=p.policy,
                trigger_event_id=p.trigger_event_id,
                actor=actor,
                comment=comment,
                proposal_id=p.id,
                bypass_guard=True,
            )
            return self.queue.record(p.id, record)

    def reject(self, proposal_id: str, actor: str, reason: str = "") -> HealProposal:
        """Reject a proposal: the file is left as it is."""
        with self._lock:
            try:
                p = self.queue.reject(proposal_id, actor, reason)
            except HealExpiredError:
                self._emit(self._proposal_record(self.queue.get(proposal_id)))
                raise
        self._emit(self._proposal_record(p))
        return p

    def expire(self) -> tuple[HealProposal, ...]:
        """Reject proposals whose approval window closed (call periodically)."""
        with self._lock:
            expired = self.queue.expire()
        for p in expired:
            self._emit(self._proposal_record(p))
        return expired

    def list_proposals(
        self, states: tuple[HealState, ...] = (), *, page_size: int = 0, page_token: str = ""
    ) -> tuple[tuple[HealProposal, ...], str]:
        return self.queue.list(states, page_size=page_size, page_token=page_token)

    def sync_vault(self) -> VaultSync:
        """Capture into the vault every healable baseline file (policy auto or approve) that
        has no copy with the baseline's hash yet: at start and after a new baseline."""
        baseline = self._baseline()
        captured: list[str] = []
        failed: list[tuple[str, str]] = []
        unchanged = 0
        for path, entry in sorted(baseline.entries.items()):
            if entry.meta.file_type is not FileType.REGULAR or entry.blake3 is None:
                continue
            if self.policy_for(path) == "never" or not self.vault.config.allows(path):
                continue
            digest = entry.blake3
            try:
                if any(hmac.compare_digest(r.blake3, digest) for r in self.vault.versions(path)):
                    unchanged += 1
                    continue
                self.vault.capture(path, digest, baseline_version=baseline.version)
                captured.append(path)
            except (BetaError, OSError) as exc:
                failed.append((path, str(exc)))
        return VaultSync(tuple(captured), unchanged, tuple(failed))

    # -- internals --

    def _emit(self, record: HealRecord) -> None:
        if self._on_record is None:
            return
        try:
            self._on_record(record)
        except Exception:  # the heal happened; a broken sink must not undo the bookkeeping
            _log.exception("heal: on_record failed for %s", record.path)

    def _proposal_record(self, p: HealProposal) -> HealRecord:
        return HealRecord(
            path=p.path,
            state=p.state,
            policy=p.policy,
            baseline_version=p.baseline_version,
            baseline_blake3=p.baseline_blake3,
            before_blake3=p.current_blake3,
            actor=p.actor,
            comment=p.comment,
            proposal_id=p.id,
            trigger_event_id=p.trigger_event_id,
            time=self._clock(),
        )

    def _propose(
        self, path: str, trigger_event_id: str
    ) -> tuple[HealProposal | None, HealRecord | None]:
        """(the pending proposal, the PROPOSED record if it is new); (None, None) when the file
        already matches the baseline."""
        check_path(path)
        baseline = self._baseline()
        entry = baseline.get(path)
        if entry is None or entry.meta.file_type is not FileType.REGULAR or entry.blake3 is None:
            raise HealConflictError(f"the baseline has no regular file at {path}")
        live = self._observe(path)
        if _matches(entry, live):
            return None, None
        existing = self.queue.pending(path, baseline.version)
        p = self.queue.propose(
            path,
            baseline_version=baseline.version,
            baseline_blake3=entry.blake3,
            current_blake3=live.digest or b"",
            trigger_event_id=trigger_event_id,
        )
        if existing is not None and existing.id == p.id:
            return p, None  # already waiting: refreshed, not announced again
        record = self._proposal_record(p)
        self._emit(record)
        return p, record

    def _observe(self, path: str) -> _Live:
        try:
            with open_parent(path) as (dir_fd, name):
                return _observe_at(dir_fd, name)
        except (UnsafePathError, FileNotFoundError, NotADirectoryError):
            return _Live(None, None)

    def _heal(self, rec: HealRecord, bypass_guard: bool) -> HealRecord:
        path = rec.path
        try:
            check_path(path)
            baseline = self._baseline()
        except UnsafePathError as exc:
            return rec.evolve(failure_reason=f"refused: {exc}")
        except BetaError as exc:
            return rec.evolve(failure_reason=f"no trusted baseline: {exc}")
        entry = baseline.get(path)
        rec = rec.evolve(baseline_version=baseline.version)
        if entry is None or entry.meta.file_type is not FileType.REGULAR or entry.blake3 is None:
            return rec.evolve(failure_reason="the baseline has no regular file at this path")
        want = entry.blake3
        live = self._observe(path)
        rec = rec.evolve(baseline_blake3=want, before_blake3=live.digest or b"")
        if _matches(entry, live):  # restored meanwhile: nothing to do, no attempt counted
            return rec.evolve(state=HealState.VERIFIED, after_blake3=live.digest or b"")
        if not bypass_guard:
            reason = self.guard.check(path, baseline.version)
            if reason is not None:
                return rec.evolve(failure_reason=reason, loop_guard=True)
        rec = self._attempt(rec, entry)
        self.guard.record(path, baseline.version, ok=rec.state is HealState.VERIFIED)
        return rec

    def _attempt(self, rec: HealRecord, entry: Entry) -> HealRecord:
        assert entry.blake3 is not None
        try:
            copy = self.vault.find(rec.path, entry.blake3)
        except BetaError as exc:  # not found, tampered, outside the roots, keys unavailable
            return rec.evolve(failure_reason=f"vault: {exc}")
        rec = rec.evolve(vault_blake3=copy.record.blake3, vault_version=copy.record.version)
        # find() verified the copy against its index entry; this ties it to the baseline.
        if not hmac.compare_digest(blake3_256(copy.content), entry.blake3):
            return rec.evolve(failure_reason="the vault copy does not hash to the baseline")
        try:
            validator, after = self._swap(rec.path, copy.content, entry)
        except UnsafePathError as exc:
            return rec.evolve(failure_reason=f"refused: {exc}")
        except _CandidateError as exc:
            return rec.evolve(failure_reason=str(exc))
        except OSError as exc:
            return rec.evolve(failure_reason=f"I/O error: {exc.strerror or exc}")
        rec = rec.evolve(validator=validator)
        if after is None:
            code = validator.exit_code if validator else -1
            return rec.evolve(failure_reason=f"the validator rejected the candidate (exit {code})")
        rec = rec.evolve(after_blake3=after.digest or b"")
        if not _matches(entry, after):
            return rec.evolve(
                failure_reason="after the swap the file does not match the baseline "
                "(changed again during the heal?)"
            )
        return rec.evolve(state=HealState.VERIFIED)

    def _swap(
        self, path: str, content: bytes, entry: Entry
    ) -> tuple[ValidatorResult | None, _Live | None]:
        """Write, validate and rename the candidate. (validator result, the file after the
        swap), or (result, None) when the validator rejected it and nothing was swapped."""
        meta = entry.meta
        # Not crypto.files' atomic write: the candidate needs the baseline's owner, mode,
        # xattrs and mtime, a name the monitor excludes, and a validator run on it between the
        # fsync and the rename (which a rejection must be able to skip without raising).
        with open_parent(path) as (dir_fd, name):
            tmp = f".{name}.{secrets.token_hex(6)}{HEAL_TEMP_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            swapped = False
            try:
                try:
                    _write_all(fd, content)
                    # Metadata before the rename, or the monitor would see (and report) the
                    # intermediate state. Owner first: chown clears set-id bits and capabilities.
                    os.fchown(fd, meta.uid, meta.gid)
                    os.fchmod(fd, meta.mode)
                    _set_xattrs(fd, meta.xattrs)
                    # The baseline's mtime too: only inode and ctime then differ (no restore
                    # can keep those); the access time is not recorded, so it takes the same.
                    os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
                    got = FileMeta.from_stat(os.fstat(fd), xattrs=read_xattrs(fd))
                    if not _meta_matches(meta, got):
                        raise _CandidateError(
                            "the candidate could not be given the baseline's mode, owner or "
                            "extended attributes"
                        )
                    os.fsync(fd)
                finally:
                    os.close(fd)
                result = None
                rule = self.config.validator_for(path)
                if rule is not None:
                    # Named through our own fd of the directory: a directory swapped into the
                    # path since the walk cannot redirect what the validator reads.
                    candidate = f"/proc/{os.getpid()}/fd/{dir_fd}/{tmp}"
                    result = run_validator(
                        rule.command,
                        candidate,
                        timeout=rule.timeout.total_seconds(),
                        max_output=self.config.max_output,
                    )
                    if not result.passed:
                        return result, None
                if self._suppress is not None:
                    self._suppress(path, entry.blake3)
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                swapped = True
                fsync_directory(dir_fd)
                return result, _observe_at(dir_fd, name)
            finally:
                if not swapped:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dir_fd)
