"""The authenticated baseline: what every watched path should be, and how it differs now.

File format (version 1)::

    QSC-FIM-BASELINE 1 version=<V> revision=<R>\\n          (one ASCII header line)
    <crypto.aead sealed blob>                               (the rest of the file)

The blob is `zlib(JSON document)` sealed with XChaCha20-Poly1305 under the key manager's active
"baseline" purpose key; the header line is its associated data, so the format number and the
version/revision hints are authenticated too. The document holds the format, the baseline
`version` (bumped when the known-good state is redefined: `baseline init`), the `revision`
(bumped on every save, including accepted churn such as a log rotation or a healed file's new
inode), the host, a digest of the watched-path configuration, and one compact array per entry:
``[path, type, mode, uid, gid, inode, size, mtime_ns, ctime_ns, blake3 hex|null,
symlink target|null, [[xattr name, base64 value], ...]]``.

Anything that does not open (an edited byte, a swapped key, a truncated file, an unknown format)
raises `BaselineTamperedError`: nothing is compared against a baseline that does not verify.
After a key rotation old baselines still open (`KeyManager.decryption_keys`) and the next save
re-seals under the active key. A store remembers the highest revision it has seen and refuses
an older one (a replayed, validly sealed old baseline); pass `min_revision` to carry that
across restarts. Writes are atomic (temp file, fsync, rename; 0600) and read-modify-write
cycles hold an flock on `<baseline>.lock`, so the CLI and the running guardian can both update.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fcntl
import functools
import hashlib
import json
import os
import re
import socket
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from beta.errors import BetaError, BetaNotFoundError, IntegrityError
from beta.fim.config import HealPolicyName
from beta.fim.metadata import FileMeta, FileType, MetaField
from crypto.aead import Sealer, open_sealed, sealed_key_id
from crypto.errors import CryptoError, DecryptionError
from crypto.files import PRIVATE_MODE, make_private_dirs, write_file_atomic
from crypto.keyring import KeyManager

__all__ = [
    "FORMAT_VERSION",
    "PURPOSE",
    "Baseline",
    "BaselineMissingError",
    "BaselineStore",
    "BaselineStoreError",
    "BaselineTamperedError",
    "Change",
    "ChangeKind",
    "Detection",
    "Entry",
    "config_digest",
    "tampered_change",
]

PURPOSE: Final = "baseline"
# A baseline inflates to at most this (1 GiB): a sealed zlib bomb stops there.
MAX_INFLATED: Final = 1 << 30
FORMAT_VERSION: Final = 1
_MAGIC: Final = b"QSC-FIM-BASELINE"
_HEADER_RE: Final = re.compile(
    rb"QSC-FIM-BASELINE (\d{1,4}) version=(\d{1,19}) revision=(\d{1,19})"
)
_MAX_HEADER: Final = 128
MAX_FILE_BYTES: Final = 1 << 30  # refuse to read a planted multi-GiB file into memory
_TYPE_CODE: Final = {
    FileType.REGULAR: "f",
    FileType.DIRECTORY: "d",
    FileType.SYMLINK: "l",
    FileType.OTHER: "o",
}
_TYPE_BY_CODE: Final = {v: k for k, v in _TYPE_CODE.items()}


class BaselineTamperedError(IntegrityError):
    """The baseline file failed authentication or is not a baseline: never trusted."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(
            f"baseline {path} failed verification ({reason}); it cannot be trusted. Investigate, "
            "then rebuild it with `qsc-beta baseline init --force`"
        )
        self.path = os.fspath(path)
        self.reason = reason


class BaselineMissingError(BetaNotFoundError):
    """No baseline has been created yet."""


class BaselineStoreError(BetaError):
    """The baseline cannot be written (or its lock taken): the message names path and reason."""


# --- entries and changes --------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One recorded path: its metadata and, for a regular file, the BLAKE3 of its content."""

    path: str
    meta: FileMeta
    blake3: bytes | None = None


class ChangeKind(enum.Enum):
    """What differs from the baseline; the names of `qsc.common.v1.FileChange`."""

    CREATED = "created"
    DELETED = "deleted"
    CONTENT_CHANGED = "content_changed"
    METADATA_CHANGED = "metadata_changed"
    BASELINE_TAMPERED = "baseline_tampered"
    LOG_ROTATED = "log_rotated"
    LOG_TRUNCATED = "log_truncated"


class Detection(enum.Enum):
    REALTIME = "realtime"
    FULL_SCAN = "full_scan"
    QUICK_SCAN = "quick_scan"


@dataclass(frozen=True)
class Change:
    """One path that differs from the baseline (a FIM event before conversion)."""

    path: str
    kind: ChangeKind
    detection: Detection
    old: Entry | None = None  # as in the baseline; None for CREATED and BASELINE_TAMPERED
    new: Entry | None = None  # as now; None for DELETED
    fields: tuple[MetaField, ...] = ()  # metadata attributes that differ
    baseline_version: int = 0
    heal: HealPolicyName = "never"
    time: float = 0.0  # when it was observed (Unix seconds)
    detail: str = ""  # e.g. "rotated to app.log.1", "type changed: regular -> symlink"

    @property
    def old_blake3(self) -> bytes | None:
        return self.old.blake3 if self.old else None

    @property
    def new_blake3(self) -> bytes | None:
        return self.new.blake3 if self.new else None


def tampered_change(
    path: Path | str, reason: str, *, detection: Detection = Detection.FULL_SCAN
) -> Change:
    """The change reported when the baseline itself fails verification."""
    return Change(
        path=os.fspath(path),
        kind=ChangeKind.BASELINE_TAMPERED,
        detection=detection,
        time=time.time(),
        detail=reason,
    )


def config_digest(digest_text: str) -> str:
    return hashlib.sha3_256(digest_text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


# --- the baseline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """An authenticated snapshot of the watched paths. Immutable: `evolve` makes the next one."""

    entries: Mapping[str, Entry]
    version: int = 1
    revision: int = 1
    created: float = 0.0
    updated: float = 0.0
    host: str = ""
    config_digest: str = ""
    key_id: str = field(default="", compare=False)  # the key it was sealed under, once saved

    def __post_init__(self) -> None:
        if not isinstance(self.entries, MappingProxyType):
            object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, path: str) -> Entry | None:
        return self.entries.get(path)

    @functools.cached_property
    def _sorted(self) -> tuple[str, ...]:
        return tuple(sorted(self.entries))

    @functools.cached_property
    def total_bytes(self) -> int:
        """Bytes of regular-file content: what a full scan will read (its ETA)."""
        return sum(
            e.meta.size for e in self.entries.values() if e.meta.file_type is FileType.REGULAR
        )

    def under(self, prefix: str) -> Iterator[Entry]:
        """Entries at `prefix` and below it."""
        keys = self._sorted
        if prefix in self.entries:
            yield self.entries[prefix]
        start = prefix.rstrip("/") + "/"
        i = bisect_left(keys, start)
        while i < len(keys) and keys[i].startswith(start):
            yield self.entries[keys[i]]
            i += 1

    def evolve(
        self,
        upsert: Iterable[Entry] = (),
        remove: Iterable[str] = (),
        *,
        new_version: bool = False,
        now: float | None = None,
    ) -> Baseline:
        """The next revision with entries replaced or removed (a new version if asked)."""
        entries = dict(self.entries)
        for path in remove:
            entries.pop(path, None)
        for entry in upsert:
            entries[entry.path] = entry
        return replace(
            self,
            entries=entries,
            version=self.version + 1 if new_version else self.version,
            revision=self.revision + 1,
            updated=time.time() if now is None else now,
            key_id="",
        )


# --- encoding -------------------------------------------------------------------------------


def _encode_entry(e: Entry) -> list[Any]:
    m = e.meta
    return [
        e.path,
        _TYPE_CODE[m.file_type],
        m.mode,
        m.uid,
        m.gid,
        m.inode,
        m.size,
        m.mtime_ns,
        m.ctime_ns,
        e.blake3.hex() if e.blake3 is not None else None,
        m.symlink_target,
        [[name, base64.b64encode(value).decode("ascii")] for name, value in m.xattrs],
    ]


def _decode_entry(item: Any) -> Entry:
    (path, code, mode, uid, gid, inode, size, mtime, ctime, digest, target, xattrs) = item
    ints = (mode, uid, gid, inode, size, mtime, ctime)
    if not isinstance(path, str) or not all(type(i) is int for i in ints):
        raise ValueError("malformed entry")
    meta = FileMeta(
        file_type=_TYPE_BY_CODE[code],
        mode=mode,
        uid=uid,
        gid=gid,
        inode=inode,
        size=size,
        mtime_ns=mtime,
        ctime_ns=ctime,
        symlink_target=target if isinstance(target, str) else None,
        xattrs=tuple((str(n), base64.b64decode(v, validate=True)) for n, v in xattrs),
    )
    return Entry(path, meta, bytes.fromhex(digest) if digest is not None else None)


def _header(version: int, revision: int) -> bytes:
    return b"%s %d version=%d revision=%d\n" % (_MAGIC, FORMAT_VERSION, version, revision)


def encode(baseline: Baseline, keys: KeyManager) -> bytes:
    doc = {
        "format": "qsc-fim-baseline",
        "format_version": FORMAT_VERSION,
        "version": baseline.version,
        "revision": baseline.revision,
        "created": baseline.created,
        "updated": baseline.updated,
        "host": baseline.host,
        "config_digest": baseline.config_digest,
        "entries": [_encode_entry(baseline.entries[p]) for p in baseline._sorted],
    }
    # ensure_ascii: non-UTF-8 file names (surrogate-escaped) survive as \udcXX escapes.
    plain = zlib.compress(json.dumps(doc, separators=(",", ":")).encode("ascii"), 6)
    header = _header(baseline.version, baseline.revision)
    return header + Sealer(keys.active_key(PURPOSE)).seal(plain, header)


def decode(data: bytes, keys: KeyManager, *, where: Path | str) -> Baseline:
    """Verify and parse a baseline file's bytes; BaselineTamperedError on any failure."""
    end = data.find(b"\n", 0, _MAX_HEADER)
    if end < 0 or not data.startswith(_MAGIC):
        raise BaselineTamperedError(where, "not a QSC FIM baseline")
    header = data[: end + 1]
    match = _HEADER_RE.fullmatch(header[:-1])
    if match is None:
        raise BaselineTamperedError(where, "malformed header")
    if int(match.group(1)) != FORMAT_VERSION:
        # Unauthenticated until opened, so an unknown number is treated like any other failure.
        raise BaselineTamperedError(where, f"unsupported format {int(match.group(1))}")
    sealed = data[end + 1 :]
    try:
        plain = open_sealed(sealed, keys.decryption_keys(PURPOSE), header)
        key_id = sealed_key_id(sealed)
    except DecryptionError:
        raise BaselineTamperedError(where, "authentication failed") from None
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(plain, MAX_INFLATED)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError("inflates past MAX_INFLATED, or truncated")
        doc = json.loads(raw)
        if doc["format"] != "qsc-fim-baseline" or doc["format_version"] != FORMAT_VERSION:
            raise ValueError("format")
        version, revision = doc["version"], doc["revision"]
        if (version, revision) != (int(match.group(2)), int(match.group(3))):
            raise ValueError("header")
        entries = {}
        for item in doc["entries"]:
            entry = _decode_entry(item)
            entries[entry.path] = entry
        return Baseline(
            entries=entries,
            version=int(version),
            revision=int(revision),
            created=float(doc["created"]),
            updated=float(doc["updated"]),
            host=str(doc["host"]),
            config_digest=str(doc["config_digest"]),
            key_id=key_id,
        )
    except (ValueError, KeyError, TypeError, RecursionError, zlib.error, binascii.Error):
        # Authentic but unreadable: written by a buggy or foreign writer holding our key.
        raise BaselineTamperedError(where, "authentic but malformed content") from None


# --- the store ------------------------------------------------------------------------------


class BaselineStore:
    """Reads and writes one baseline file, authenticated with the key manager's baseline key."""

    def __init__(self, path: Path | str, keys: KeyManager, *, min_revision: int = 0) -> None:
        self.path = Path(path)
        self._keys = keys
        self._highest = min_revision  # the newest revision seen: older ones are replays

    def __repr__(self) -> str:
        return f"BaselineStore({os.fspath(self.path)!r})"

    @property
    def highest_revision(self) -> int:
        return self._highest

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def exists(self) -> bool:
        return self.path.exists()

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    raise BaselineTamperedError(self.path, f"{size} bytes is not a baseline")
                return f.read()
        except FileNotFoundError:
            raise BaselineMissingError(
                f"no baseline at {self.path}; create one with `qsc-beta baseline init`"
            ) from None
        except IsADirectoryError:
            raise BaselineTamperedError(self.path, "is a directory") from None
        except OSError as exc:
            raise BaselineStoreError(
                f"baseline {self.path}: cannot read ({exc.strerror})"
            ) from None

    def load(self) -> Baseline:
        """Read and verify; BaselineTamperedError if it does not verify or is older than one
        this store has seen, BaselineMissingError if there is none."""
        try:
            baseline = decode(self._read(), self._keys, where=self.path)
        except CryptoError as exc:  # the keyring itself is unusable: not the baseline's fault
            raise BaselineStoreError(f"baseline {self.path}: keys unavailable ({exc})") from None
        if baseline.revision < self._highest:
            raise BaselineTamperedError(
                self.path,
                f"revision {baseline.revision} is older than revision {self._highest} already "
                "seen (an old baseline put back)",
            )
        self._highest = baseline.revision
        return baseline

    def needs_reseal(self, baseline: Baseline) -> bool:
        """Sealed under a key that is no longer the active one (after a rotation)."""
        return baseline.key_id != self._keys.active_key(PURPOSE).key_id

    def save(self, baseline: Baseline) -> Baseline:
        """Seal and write atomically; returns it with `key_id` set."""
        if baseline.revision <= self._highest and self._highest:
            raise BaselineStoreError(
                f"baseline {self.path}: revision {baseline.revision} is not newer than "
                f"{self._highest}; build it with Baseline.evolve or BaselineStore.update"
            )
        try:
            data = encode(baseline, self._keys)
            key_id = self._keys.active_key(PURPOSE).key_id
        except CryptoError as exc:
            raise BaselineStoreError(f"baseline {self.path}: keys unavailable ({exc})") from None
        try:
            make_private_dirs(self.path.parent)
            write_file_atomic(self.path, data, mode=PRIVATE_MODE, overwrite=True)
        except OSError as exc:
            raise BaselineStoreError(
                f"baseline {self.path}: cannot write ({exc.strerror})"
            ) from None
        self._highest = baseline.revision
        return replace(baseline, key_id=key_id)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive flock for a read-modify-write cycle, across processes."""
        try:
            make_private_dirs(self.path.parent)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
        except OSError as exc:
            raise BaselineStoreError(f"cannot open lock {self.lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def create(
        self,
        entries: Iterable[Entry],
        *,
        config_digest: str = "",
        host: str | None = None,
        replace_tampered: bool = False,
        now: float | None = None,
    ) -> Baseline:
        """Write a new baseline version from a fresh snapshot. An existing baseline that does
        not verify is only replaced with `replace_tampered` (after investigation)."""
        now = time.time() if now is None else now
        with self.locked():
            version, revision = 1, max(1, self._highest + 1)
            try:
                old = self.load()
                version, revision = old.version + 1, old.revision + 1
            except BaselineMissingError:
                pass
            except BaselineTamperedError:
                if not replace_tampered:
                    raise
                hint = self._header_hint()
                version, revision = hint[0] + 1, max(revision, hint[1] + 1)
            baseline = Baseline(
                entries={e.path: e for e in entries},
                version=version,
                revision=max(revision, self._highest + 1),
                created=now,
                updated=now,
                host=socket.gethostname() if host is None else host,
                config_digest=config_digest,
            )
            return self.save(baseline)

    def update(self, mutate: Callable[[Baseline], Baseline | None]) -> Baseline | None:
        """Re-read under the lock, apply `mutate` (returning the next revision, or None for no
        change) and save. Returns what was saved, or None."""
        with self.locked():
            current = self.load()
            nxt = mutate(current)
            if nxt is None:
                return None
            if nxt.revision <= current.revision:
                nxt = replace(nxt, revision=current.revision + 1)
            return self.save(nxt)

    def _header_hint(self) -> tuple[int, int]:
        """(version, revision) from an unverified header: only to keep numbers increasing."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(_MAX_HEADER)
        except OSError:
            return (0, 0)
        match = _HEADER_RE.match(head)
        if match is None:
            return (0, 0)
        return (min(int(match.group(2)), 1 << 40), min(int(match.group(3)), 1 << 40))
