"""Verifying a backup set against its authenticated manifest.

Two depths. STRUCTURAL walks the set once (no file content is read): every manifest file must be
present with its size, nothing else may be there. FULL does the same walk, then re-reads and
re-hashes files (SHA3-256; for an encrypted set, also opening every chunk with the keys). Large
sets are split into `ceil(1 / subset_fraction)` rotating subsets, balanced by bytes and fixed by
the manifest; a persisted, authenticated cursor says which subset runs next, so every file is
fully verified at least once every `subset_count` runs (a run that is interrupted does not
advance it). Memory is bounded by the manifest (one small record per file), never by file sizes.

The manifest is authenticated before anything else; if it fails, the result is a single
MANIFEST_TAMPERED failure and no file is judged against it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import errno
import heapq
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from beta.backups.manifest import (
    PURPOSE,
    KeySource,
    Manifest,
    ManifestEntry,
    ManifestError,
    ManifestUnreadableError,
    load_manifest,
    relative_inside,
)
from beta.backups.scan import (
    ByteCounter,
    Digest,
    Found,
    Progress,
    ProgressCallback,
    default_workers,
    digest_file,
    map_ordered,
    walk,
)
from beta.errors import BetaConfigError
from crypto.aead import AeadKey, Sealer, open_sealed
from crypto.errors import DecryptionError
from crypto.files import PRIVATE_MODE, write_file_atomic
from crypto.kdf import encode_fields

__all__ = [
    "DEFAULT_MAX_FAILURES",
    "BackupFailure",
    "FailureKind",
    "VerifyDepth",
    "VerifyResult",
    "assign_subsets",
    "subset_count_for",
    "verify_backup_set",
]

DEFAULT_MAX_FAILURES: Final = 100
CURSOR_FORMAT: Final = "qsc-backup-cursor"
CURSOR_VERSION: Final = 1
# Opening a file costs about as much as reading this many bytes: keeps subsets of many small
# files balanced too (and spreads empty files instead of piling them into one subset).
_FILE_COST: Final = 64 * 1024
_PROGRESS_INTERVAL: Final = 0.2


class VerifyDepth(enum.Enum):
    STRUCTURAL = "structural"
    FULL = "full"


class FailureKind(enum.Enum):
    MISSING = "missing"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size-mismatch"
    CONTENT_MISMATCH = "content-mismatch"
    UNEXPECTED_FILE = "unexpected-file"
    MANIFEST_TAMPERED = "manifest-tampered"
    DECRYPTION_FAILURE = "decryption-failure"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class BackupFailure:
    kind: FailureKind
    path: str  # relative to the set's root; the manifest path for MANIFEST_TAMPERED
    expected_size: int = 0
    actual_size: int = 0
    expected_sha3_256: bytes = b""
    actual_sha3_256: bytes = b""  # empty unless the file was hashed
    message: str = ""


@dataclass(frozen=True)
class VerifyResult:
    backup_set: str
    depth: VerifyDepth
    passed: bool
    files_expected: int
    files_checked: int  # STRUCTURAL: files stat'ed; FULL: files re-hashed in this run
    bytes_checked: int  # bytes read and hashed
    failures: tuple[BackupFailure, ...]  # at most max_failures, sorted by path
    failure_count: int  # all failures, listed or not
    manifest_path: Path
    manifest_created: dt.datetime | None
    subset_index: int
    subset_count: int  # 1 when the whole set was verified
    started: dt.datetime
    duration: dt.timedelta
    notes: tuple[str, ...] = ()  # e.g. why the rotation cursor restarted


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- rotating subsets -----------------------------------------------------------------------


def subset_count_for(fraction: float, files: int) -> int:
    """How many subsets `fraction` asks for: never more than there are files."""
    if not 0 < fraction <= 1 or math.isnan(fraction):
        raise BetaConfigError(f"subset_fraction: must be in (0, 1], got {fraction!r}")
    return max(1, min(math.ceil(1 / fraction - 1e-9), files))


def assign_subsets(entries: Sequence[ManifestEntry], count: int) -> list[int]:
    """The subset of each entry: greedy largest-first onto the lightest subset (LPT), so each
    run reads about the same number of bytes. Deterministic for a given manifest."""
    assignment = [0] * len(entries)
    if count <= 1:
        return assignment
    heap = [(0, s) for s in range(count)]
    for i in sorted(range(len(entries)), key=lambda i: (-entries[i].size, i)):
        load, subset = heapq.heappop(heap)
        assignment[i] = subset
        heapq.heappush(heap, (load + entries[i].size + _FILE_COST, subset))
    return assignment


def _cursor_aad(manifest_digest: bytes, subset_count: int, next_subset: int) -> bytes:
    return encode_fields(CURSOR_FORMAT, CURSOR_VERSION, manifest_digest, subset_count, next_subset)


def _read_cursor(
    path: Path, keys: Mapping[str, AeadKey], manifest: Manifest, count: int
) -> tuple[int, str | None]:
    """(subset to verify now, why it restarted at 0 or None)."""
    try:
        doc = json.loads(path.read_bytes())
        digest = bytes.fromhex(doc["manifest_sha3_256"])
        stored_count, subset = doc["subset_count"], doc["next_subset"]
        tag = base64.b64decode(doc["auth"], validate=True)
    except FileNotFoundError:
        return 0, None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        return 0, f"rotation cursor {path} is unreadable or malformed; restarted at subset 0"
    if type(stored_count) is not int or type(subset) is not int:
        return 0, f"rotation cursor {path} is malformed; restarted at subset 0"
    try:
        open_sealed(tag, keys, _cursor_aad(digest, stored_count, subset))
    except DecryptionError:
        return 0, f"rotation cursor {path} does not authenticate (edited); restarted at subset 0"
    if digest != manifest.digest or stored_count != count or not 0 <= subset < count:
        return 0, None  # a new manifest or a new fraction: a new rotation
    return subset, None


def _write_cursor(path: Path, key: AeadKey, manifest: Manifest, count: int, subset: int) -> None:
    tag = Sealer(key).seal(b"", _cursor_aad(manifest.digest, count, subset))
    doc = {
        "format": CURSOR_FORMAT,
        "version": CURSOR_VERSION,
        "manifest_sha3_256": manifest.digest.hex(),
        "subset_count": count,
        "next_subset": subset,
        "auth": base64.b64encode(tag).decode("ascii"),
    }
    write_file_atomic(path, (json.dumps(doc) + "\n").encode(), mode=PRIVATE_MODE, overwrite=True)


# --- collecting failures --------------------------------------------------------------------


class _Failures:
    """Counts every failure, keeps the first `limit` (in manifest order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[BackupFailure] = []
        self.count = 0

    def add(self, failure: BackupFailure) -> None:
        self.count += 1
        if len(self.kept) < self.limit:
            self.kept.append(failure)

    def sorted(self) -> tuple[BackupFailure, ...]:
        return tuple(sorted(self.kept, key=lambda f: (f.path, f.kind.value)))


def _size_failure(entry: ManifestEntry, actual: int) -> BackupFailure:
    kind = FailureKind.TRUNCATED if actual < entry.size else FailureKind.SIZE_MISMATCH
    word = "shorter" if actual < entry.size else "longer"
    return BackupFailure(
        kind,
        entry.path,
        entry.size,
        actual,
        entry.sha3_256,
        message=f"{actual} bytes, {word} than the {entry.size} the manifest records",
    )


def _io_failure(entry: ManifestEntry, exc: OSError) -> BackupFailure:
    if exc.errno == errno.ENOENT:
        return BackupFailure(
            FailureKind.MISSING, entry.path, entry.size, 0, entry.sha3_256, message="disappeared"
        )
    reason = "replaced by a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
    return BackupFailure(
        FailureKind.UNREADABLE, entry.path, entry.size, 0, entry.sha3_256, message=reason
    )


def _content_failure(entry: ManifestEntry, d: Digest) -> BackupFailure | None:
    if d.error is not None:
        return _io_failure(entry, d.error)
    if d.size != entry.size:
        # Changed between the walk and the read.
        return _size_failure(entry, d.size)
    matches = d.sha3_256 == entry.sha3_256
    if d.decrypted is False:
        why = (
            "the ciphertext is as the manifest recorded it: wrong or lost key, or it was "
            "written damaged"
            if matches
            else "the ciphertext also differs from the manifest: damaged since"
        )
        return BackupFailure(
            FailureKind.DECRYPTION_FAILURE,
            entry.path,
            entry.size,
            d.size,
            entry.sha3_256,
            d.sha3_256,
            f"does not decrypt; {why}",
        )
    if not matches:
        return BackupFailure(
            FailureKind.CONTENT_MISMATCH,
            entry.path,
            entry.size,
            d.size,
            entry.sha3_256,
            d.sha3_256,
            "SHA3-256 differs from the manifest (bit rot or tampering)",
        )
    return None


# --- verification ---------------------------------------------------------------------------


@dataclass
class _Run:
    """Mutable state of one verification (the result is built from it at the end)."""

    failures: _Failures
    counter: ByteCounter = dataclasses.field(default_factory=ByteCounter)
    files_done: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def _structural(
    root: Path,
    manifest: Manifest,
    skip: frozenset[str],
    run: _Run,
    progress: Callable[[bool], None],
) -> list[ManifestEntry]:
    """Walk the set against the manifest; return the entries present with the right size."""
    expected = {e.path: e for e in manifest.entries}
    present: list[ManifestEntry] = []
    unlisted_dirs: list[tuple[str, OSError]] = []

    def on_error(rel: str, exc: OSError) -> None:
        if rel in expected:
            run.failures.add(_io_failure(expected.pop(rel), exc))
        else:
            unlisted_dirs.append((rel, exc))

    found: Iterator[Found] = walk(root, exclude=manifest.exclude, skip=skip, on_error=on_error)
    for item in found:
        entry = expected.pop(item.rel, None)
        run.files_done += 1
        progress(False)
        if entry is None:
            if item.regular:
                run.failures.add(
                    BackupFailure(
                        FailureKind.UNEXPECTED_FILE,
                        item.rel,
                        actual_size=item.size,
                        message="not in the manifest",
                    )
                )
        elif not item.regular:
            run.failures.add(
                BackupFailure(
                    FailureKind.UNREADABLE,
                    entry.path,
                    entry.size,
                    0,
                    entry.sha3_256,
                    message=f"is a {item.kind}, not a regular file",
                )
            )
        elif item.size != entry.size:
            run.failures.add(_size_failure(entry, item.size))
        else:
            present.append(entry)
    for entry in expected.values():  # manifest order: expected keeps insertion order
        blocked = next(
            (exc for d, exc in unlisted_dirs if d == "" or entry.path.startswith(d + "/")), None
        )
        if blocked is not None and blocked.errno != errno.ENOENT:
            run.failures.add(
                BackupFailure(
                    FailureKind.UNREADABLE,
                    entry.path,
                    entry.size,
                    0,
                    entry.sha3_256,
                    message=f"its directory cannot be listed ({blocked.strerror or blocked})",
                )
            )
        else:
            run.failures.add(
                BackupFailure(
                    FailureKind.MISSING,
                    entry.path,
                    entry.size,
                    0,
                    entry.sha3_256,
                    message="not found",
                )
            )
    return present


def _manifest_failure(path: Path, exc: ManifestError) -> BackupFailure:
    kind = (
        FailureKind.UNREADABLE
        if isinstance(exc, ManifestUnreadableError)
        else FailureKind.MANIFEST_TAMPERED
    )
    return BackupFailure(kind, str(path), message=exc.reason)


def verify_backup_set(
    root: Path,
    manifest_path: Path,
    keys: KeySource,
    *,
    backup_set: str | None = None,
    depth: VerifyDepth = VerifyDepth.FULL,
    subset_fraction: float = 1.0,
    cursor_path: Path | None = None,
    whole_set: bool = False,
    decryption_keys: Mapping[str, AeadKey] | None = None,
    progress: ProgressCallback | None = None,
    max_failures: int = DEFAULT_MAX_FAILURES,
    workers: int | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> VerifyResult:
    """Verify `root` against the manifest at `manifest_path`; never raises for what it finds.

    `keys` authenticates the manifest and the rotation cursor (`manifest` purpose).
    `decryption_keys` opens an encrypted set's files at FULL depth; without them an encrypted
    set is verified by hash only (and a note says so). `subset_fraction` < 1 needs
    `cursor_path` unless `whole_set`. `backup_set`, when given, must be the name the manifest
    records (else MANIFEST_TAMPERED: a swapped manifest); by default the manifest's name is used.
    Raises BetaConfigError for bad arguments only."""
    started, t0 = clock(), time.monotonic()
    if max_failures < 0:
        raise BetaConfigError("max_failures: must not be negative")
    if depth is VerifyDepth.FULL and subset_fraction < 1 and not whole_set and not cursor_path:
        subset_count_for(subset_fraction, 1)  # a bad fraction is reported first
        raise BetaConfigError(
            "cursor_path: rotating subsets need a cursor file to remember the rotation"
        )
    run = _Run(_Failures(max_failures))

    def finish(
        manifest: Manifest | None, files_checked: int, subset: int, count: int
    ) -> VerifyResult:
        return VerifyResult(
            backup_set=backup_set or (manifest.backup_set if manifest else ""),
            depth=depth,
            passed=run.failures.count == 0,
            files_expected=manifest.file_count if manifest else 0,
            files_checked=files_checked,
            bytes_checked=run.counter.value,
            failures=run.failures.sorted(),
            failure_count=run.failures.count,
            manifest_path=manifest_path,
            manifest_created=manifest.created if manifest else None,
            subset_index=subset,
            subset_count=count,
            started=started,
            duration=dt.timedelta(seconds=time.monotonic() - t0),
            notes=tuple(run.notes),
        )

    try:
        manifest = load_manifest(manifest_path, keys)
    except ManifestError as exc:
        run.failures.add(_manifest_failure(manifest_path, exc))
        return finish(None, 0, 0, 1)
    if backup_set is not None and manifest.backup_set != backup_set:
        # Authentic, but another set's: a swapped manifest must not pass as this set's.
        run.failures.add(
            BackupFailure(
                FailureKind.MANIFEST_TAMPERED,
                str(manifest_path),
                message=f"is the manifest of backup set {manifest.backup_set!r}, "
                f"not {backup_set!r}",
            )
        )
        return finish(None, 0, 0, 1)

    skip = frozenset(
        r for r in (relative_inside(root, manifest_path), _maybe_rel(root, cursor_path)) if r
    )
    phase = "scan"
    files_total = manifest.file_count
    bytes_total = 0
    last = 0.0

    def report(force: bool = False) -> None:
        nonlocal last
        now = time.monotonic()
        if progress is not None and (force or now - last >= _PROGRESS_INTERVAL):
            last = now
            progress(Progress(phase, run.files_done, files_total, run.counter.value, bytes_total))

    report(True)
    present = _structural(root, manifest, skip, run, report)
    if depth is VerifyDepth.STRUCTURAL:
        report(True)
        return finish(manifest, manifest.file_count, 0, 1)

    count, subset = 1, 0
    key_map = keys.decryption_keys(PURPOSE)
    if not whole_set and subset_fraction < 1:
        assert cursor_path is not None
        count = subset_count_for(subset_fraction, manifest.file_count)
        subset, note = _read_cursor(cursor_path, key_map, manifest, count)
        if note:
            run.notes.append(note)
    if count > 1:
        assignment = assign_subsets(manifest.entries, count)
        index = {e.path: i for i, e in enumerate(manifest.entries)}
        targets = [e for e in present if assignment[index[e.path]] == subset]
    else:
        targets = present
    open_keys = decryption_keys if manifest.encrypted else None
    if manifest.encrypted and decryption_keys is None:
        run.notes.append("encrypted set verified by hash only: no decryption keys were given")

    phase, run.files_done = "hash", 0
    files_total, bytes_total = len(targets), sum(e.size for e in targets)
    report(True)

    def check(entry: ManifestEntry) -> Digest:
        return digest_file(root / entry.path, keys=open_keys, counter=run.counter)

    for entry, d in map_ordered(check, targets, workers=workers or default_workers(), tick=report):
        failure = _content_failure(entry, d)
        if failure is not None:
            run.failures.add(failure)
        run.files_done += 1
        report()
    report(True)
    if count > 1 and cursor_path is not None:
        try:
            _write_cursor(
                cursor_path, keys.active_key(PURPOSE), manifest, count, (subset + 1) % count
            )
        except OSError as exc:
            run.notes.append(f"rotation cursor {cursor_path} not saved: {exc.strerror or exc}")
    return finish(manifest, len(targets), subset, count)


def _maybe_rel(root: Path, path: Path | None) -> str | None:
    return relative_inside(root, path) if path is not None else None
