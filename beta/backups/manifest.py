"""Backup manifests: what a backup set held when it was taken, authenticated with a keyring key.

Format (version 1): UTF-8 JSON Lines, one object per line, readable and greppable::

    {"format":"qsc-backup-manifest","version":1,"backup_set":"db","created":"...Z",
     "hash":"sha3-256","encrypted":false,"exclude":["*.tmp"],"file_count":2,"total_size":30}
    {"path":"a/x.dump","sha3_256":"<64 hex>","size":10}       one line per regular file,
    {"path":"b.dump","sha3_256":"<64 hex>","size":20}         sorted by path
    {"auth":"<base64>"}                                       the trailer, always last

The *body* is every byte before the trailer. `auth` is a `crypto.aead` seal (XChaCha20-Poly1305,
random 192-bit nonce) of an empty message under the keyring's active ``manifest`` purpose key,
with associated data ``encode_fields(format, version, SHA3-256(body))``: an AEAD used as a MAC,
so the manifest stays readable while any edit of a byte fails authentication (in constant time,
inside the AEAD). The sealed header names the key id, so manifests made before a key rotation
still verify with the old epoch's key. Paths are relative, '/'-separated; undecodable bytes in
names are kept by surrogate escapes (JSON ``\\udcXX``).

The file is written atomically (temporary file, fsync, link/rename, directory fsync), so a crash
leaves the old manifest or the new one, never half of one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from beta.backups.scan import (
    ByteCounter,
    Found,
    Progress,
    ProgressCallback,
    default_workers,
    digest_file,
    map_ordered,
    walk,
)
from beta.errors import BetaError, BetaNotFoundError, IntegrityError
from crypto.aead import AeadKey, Sealer, open_sealed, sealed_key_id
from crypto.errors import DecryptionError
from crypto.files import (
    PRIVATE_MODE,
    FileTooLargeError,
    NotRegularFileError,
    read_regular_capped,
    write_file_atomic,
)
from crypto.kdf import encode_fields
from mesh import errors as mesh_errors

__all__ = [
    "FORMAT",
    "PURPOSE",
    "VERSION",
    "BackupSetChangedError",
    "KeySource",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "ManifestMissingError",
    "ManifestTamperedError",
    "ManifestUnreadableError",
    "create_manifest",
    "encode_manifest",
    "load_manifest",
    "relative_inside",
]

FORMAT: Final = "qsc-backup-manifest"
VERSION: Final = 1
PURPOSE: Final = "manifest"  # the keyring purpose (crypto.kdf.PURPOSES)
HASH_NAME: Final = "sha3-256"
# A manifest is read whole before it is trusted; this caps what a planted file can cost.
MAX_MANIFEST_BYTES: Final = 1024 * 1024 * 1024
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- errors ---------------------------------------------------------------------------------


class ManifestError(IntegrityError):
    """A manifest cannot be used; `reason` says why, `path` which manifest."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"manifest {path}: {reason}")
        self.path = path
        self.reason = reason


class ManifestTamperedError(ManifestError):
    """The manifest does not authenticate or does not parse: nothing in it can be trusted."""


class ManifestMissingError(ManifestError, BetaNotFoundError):
    """There is no manifest at the path (never created, or deleted)."""


class ManifestUnreadableError(ManifestError):
    """The manifest exists but cannot be read (permission, I/O error)."""


class BackupSetChangedError(BetaError, mesh_errors.FailedPreconditionError):
    """A file changed while the manifest was being created: the set was not quiescent."""


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str  # relative, '/'-separated
    size: int
    sha3_256: bytes


@dataclass(frozen=True)
class Manifest:
    backup_set: str
    created: dt.datetime
    encrypted: bool  # every file is a beta.backups.sealedfile stream
    exclude: tuple[str, ...]
    entries: tuple[ManifestEntry, ...]  # sorted by path
    key_id: str  # the key that authenticated it
    digest: bytes  # SHA3-256 of the body: names this manifest (rotation cursors bind to it)

    @property
    def file_count(self) -> int:
        return len(self.entries)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)


class KeySource(Protocol):
    """What manifests need from a key manager (`crypto.keyring.KeyManager` is one)."""

    def active_key(self, purpose: str) -> AeadKey: ...

    def decryption_keys(self, purpose: str) -> Mapping[str, AeadKey]: ...


# --- encoding -------------------------------------------------------------------------------


def _line(obj: Mapping[str, Any]) -> bytes:
    # ensure_ascii: surrogate-escaped names survive as \udcXX; sort_keys: one encoding per content.
    return (
        json.dumps(obj, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    )


def _auth_aad(body_digest: bytes) -> bytes:
    return encode_fields(FORMAT, VERSION, body_digest)


def _format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def encode_manifest(
    *,
    backup_set: str,
    created: dt.datetime,
    encrypted: bool,
    exclude: tuple[str, ...],
    entries: Iterable[ManifestEntry],
    key: AeadKey,
) -> bytes:
    """The authenticated manifest file content for `entries` (sorted here)."""
    ordered = sorted(entries, key=lambda e: e.path)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "backup_set": backup_set,
        "created": _format_time(created),
        "hash": HASH_NAME,
        "encrypted": encrypted,
        "exclude": list(exclude),
        "file_count": len(ordered),
        "total_size": sum(e.size for e in ordered),
    }
    parts = [_line(header)]
    parts.extend(
        _line({"path": e.path, "size": e.size, "sha3_256": e.sha3_256.hex()}) for e in ordered
    )
    body = b"".join(parts)
    tag = Sealer(key).seal(b"", _auth_aad(hashlib.sha3_256(body).digest()))
    return body + _line({"auth": base64.b64encode(tag).decode("ascii")})


# --- loading --------------------------------------------------------------------------------


def _read_manifest_bytes(path: Path) -> bytes:
    try:
        return read_regular_capped(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ManifestMissingError(path, "no such file (never created, or deleted)") from None
    except NotRegularFileError:
        raise ManifestTamperedError(path, "is not a regular file") from None
    except FileTooLargeError:
        raise ManifestTamperedError(path, f"is larger than {MAX_MANIFEST_BYTES} bytes") from None
    except OSError as exc:
        raise ManifestUnreadableError(path, f"cannot open ({exc.strerror})") from None


def _split(path: Path, data: bytes) -> tuple[bytes, bytes]:
    if not data.endswith(b"\n"):
        raise ManifestTamperedError(path, "is truncated (no final newline)")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    if cut == 0:
        raise ManifestTamperedError(path, "has no body before its authentication line")
    return data[:cut], data[cut:]


def _authenticate(path: Path, body: bytes, trailer: bytes, keys: Mapping[str, AeadKey]) -> str:
    try:
        doc = json.loads(trailer)
        tag = base64.b64decode(doc["auth"], validate=True)
        key_id = sealed_key_id(tag)
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error, DecryptionError):
        raise ManifestTamperedError(path, "has no valid authentication line") from None
    if key_id not in keys:
        raise ManifestTamperedError(
            path,
            f"is authenticated by key {key_id!r}, which this keyring does not have (another "
            "keyring, or the id was edited)",
        )
    try:
        open_sealed(tag, keys, _auth_aad(hashlib.sha3_256(body).digest()))
    except DecryptionError:
        raise ManifestTamperedError(
            path, "does not authenticate: it was edited after it was created"
        ) from None
    return key_id


def _valid_rel(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _int(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _parse_header(path: Path, line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise ManifestTamperedError(path, "has a malformed header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ManifestTamperedError(path, "is not a QSC backup manifest")
    if header.get("version") != VERSION:
        raise ManifestTamperedError(
            path, f"has unsupported format version {header.get('version')!r}"
        )
    if header.get("hash") != HASH_NAME:
        raise ManifestTamperedError(path, f"uses unsupported hash {header.get('hash')!r}")
    return header


def _parse_entries(path: Path, lines: list[bytes]) -> tuple[ManifestEntry, ...]:
    entries: list[ManifestEntry] = []
    previous = ""
    for number, line in enumerate(lines, start=2):
        try:
            item = json.loads(line)
            rel, size, digest = item["path"], _int(item["size"]), bytes.fromhex(item["sha3_256"])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ManifestTamperedError(path, f"has a malformed entry on line {number}") from None
        if not _valid_rel(rel) or size is None or len(digest) != 32:
            raise ManifestTamperedError(path, f"has an invalid entry on line {number}")
        if rel <= previous:
            raise ManifestTamperedError(path, f"has unsorted or duplicate paths (line {number})")
        previous = rel
        entries.append(ManifestEntry(rel, size, digest))
    return tuple(entries)


def load_manifest(path: Path, keys: KeySource | Mapping[str, AeadKey]) -> Manifest:
    """Read, authenticate, then parse a manifest. Authentication comes first: no byte of an
    unauthenticated manifest is interpreted beyond finding its trailer.

    Raises ManifestMissingError, ManifestUnreadableError or ManifestTamperedError."""
    key_map = keys if isinstance(keys, Mapping) else keys.decryption_keys(PURPOSE)
    data = _read_manifest_bytes(path)
    body, trailer = _split(path, data)
    key_id = _authenticate(path, body, trailer, key_map)
    header_line, _, rest = body.partition(b"\n")
    header = _parse_header(path, header_line)
    entries = _parse_entries(path, rest.splitlines())
    backup_set, created_s = header.get("backup_set"), header.get("created")
    encrypted, exclude = header.get("encrypted"), header.get("exclude")
    try:
        created = dt.datetime.strptime(str(created_s), _TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        raise ManifestTamperedError(path, "has a malformed creation time") from None
    if (
        not isinstance(backup_set, str)
        or not isinstance(encrypted, bool)
        or not isinstance(exclude, list)
        or not all(isinstance(p, str) for p in exclude)
    ):
        raise ManifestTamperedError(path, "has a malformed header")
    manifest = Manifest(
        backup_set=backup_set,
        created=created,
        encrypted=encrypted,
        exclude=tuple(exclude),
        entries=entries,
        key_id=key_id,
        digest=hashlib.sha3_256(body).digest(),
    )
    if header.get("file_count") != manifest.file_count or header.get("total_size") != (
        manifest.total_size
    ):
        raise ManifestTamperedError(path, "has totals that do not match its entries")
    return manifest


# --- creating -------------------------------------------------------------------------------


def relative_inside(root: Path, path: Path) -> str | None:
    """`path` relative to `root` when it lies inside (so walks skip it), else None."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else None


def create_manifest(
    root: Path,
    manifest_path: Path,
    keys: KeySource,
    *,
    backup_set: str,
    exclude: tuple[str, ...] = (),
    encrypted: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    clock: Clock = utcnow,
) -> Manifest:
    """Hash every regular file below `root` and write the authenticated manifest.

    Symlinks and special files are not backup content and are left out (verification ignores
    them the same way). A file that changes size while being hashed raises
    BackupSetChangedError: a manifest of a set still being written would fail every later
    verify. OSError (unreadable root or file) propagates with the path."""
    if not backup_set:
        raise ValueError("a backup set needs a name")
    if not root.is_dir():
        raise NotADirectoryError(20, "backup set root is not a directory", str(root))
    key = keys.active_key(PURPOSE)
    skip = frozenset(r for r in (relative_inside(root, manifest_path),) if r is not None)

    def on_error(rel: str, exc: OSError) -> None:
        raise exc

    found = [f for f in walk(root, exclude=exclude, skip=skip, on_error=on_error) if f.regular]
    total = sum(f.size for f in found)
    counter = ByteCounter()
    done = 0
    last_report = 0.0

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress is not None and (force or now - last_report >= 0.2):
            last_report = now
            progress(Progress("hash", done, len(found), counter.value, total))

    def hash_one(item: Found) -> tuple[int, bytes]:
        d = digest_file(root / item.rel, keys=None, counter=counter)
        if d.error is not None:
            raise d.error
        return d.size, d.sha3_256

    entries: list[ManifestEntry] = []
    for item, (size, digest) in map_ordered(
        hash_one, found, workers=workers or default_workers(), tick=report
    ):
        if size != item.size:
            raise BackupSetChangedError(
                f"{item.rel} changed size while it was hashed ({item.size} -> {size} bytes); "
                "create the manifest once the backup has finished writing"
            )
        entries.append(ManifestEntry(item.rel, size, digest))
        done += 1
        report()
    report(force=True)
    created = clock().replace(microsecond=0)
    data = encode_manifest(
        backup_set=backup_set,
        created=created,
        encrypted=encrypted,
        exclude=exclude,
        entries=entries,
        key=key,
    )
    try:
        write_file_atomic(manifest_path, data, mode=PRIVATE_MODE, overwrite=overwrite)
    except FileExistsError:
        raise FileExistsError(
            17, "manifest already exists (pass overwrite to replace it)", str(manifest_path)
        ) from None
    body = data[: data.rfind(b"\n", 0, len(data) - 1) + 1]
    return Manifest(
        backup_set=backup_set,
        created=created,
        encrypted=encrypted,
        exclude=exclude,
        entries=tuple(sorted(entries, key=lambda e: e.path)),
        key_id=key.key_id,
        digest=hashlib.sha3_256(body).digest(),
    )
