"""The vault: known-good copies of healable files, sealed with AES-256-GCM, verified on every read.

Layout (the directory and its subdirectories 0700, every file 0600)::

    <vault>/index.qsc             the authenticated index (below)
    <vault>/objects/<slot>.<v>    one sealed copy: `slot` = BLAKE3 of the path, `v` its version
    <vault>/nonces/<key id>.json  the persisted AES-GCM nonce counter of one key id
    <vault>/vault.lock            flock held for every read-modify-write of the index

**Keys and nonces.** The key manager's "vault" purpose key (XChaCha20-Poly1305) is not used
directly: an AES-256-GCM key is derived from it with HKDF (label "vault-aes-256-gcm", bound to
the purpose key id), id ``<purpose key id>/gcm``, so the two algorithms never share a key. Its
nonces are ``random fixed field (4) || counter (8)`` from a `crypto.nonces.CounterNonceSource`
whose state is reserved durably before use: no nonce repeats across restarts or crashes. A key
rotation gives a new key id, hence a new counter file; old keys still open old copies. A counter
file that is missing while anything sealed under its key exists is refused, never re-created
(starting again at zero would reuse nonces).

**Objects.** A copy is a `crypto.aead` sealed message (its header names the key id, algorithm
and nonce, all authenticated) with associated data
``encode_fields("qsc-vault-object", 1, path bytes, version, BLAKE3 of the content)``: a copy
moved to another path's slot or version, or listed under another hash, does not open. Object
names come from a hash of the path, never the path itself, so no stored name can traverse.

**Index.** ``QSC-VAULT-INDEX 1 revision=<R>\\n`` then the sealed JSON document (path ->
next version and the retained versions: version, BLAKE3, size, baseline version, time, key id),
the header line being the associated data. A vault remembers the highest revision it has read
and refuses an older index; a missing index while objects exist is tampering, not emptiness.

**Reads** decrypt and compare the BLAKE3 of the plaintext with the indexed hash (constant
time); any failure is `VaultTamperedError`. **Verification** (`verify`) reads every retained copy
that way, one at a time, so a corrupted copy is found before a heal needs it; `quarantine`
takes bad copies out of the index and renames their objects `<object>.tampered` (kept for
investigation, never read again), and `put` writes a fresh version when the newest copy of a
path no longer verifies, so a capture from a live file that matches the baseline repairs it.
Paths must be absolute, normal and under the configured roots; live files are read through a
symlink-free directory-fd walk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from beta.errors import BetaError, BetaNotFoundError, IntegrityError
from beta.vault.safefs import (
    UnsafePathError,
    check_path,
    open_parent,
    read_regular_at,
    write_atomic_at,
)
from crypto.aead import AeadKey, Sealer, open_sealed, sealed_key_id
from crypto.errors import CryptoError, DecryptionError, NonceStateLostError
from crypto.files import make_private_dirs
from crypto.hashing import blake3_256
from crypto.kdf import encode_fields
from crypto.keyring import KeyManager
from crypto.nonces import CounterNonceSource
from crypto.subkeys import gcm_key, open_counter_nonces
from mesh.errors import FailedPreconditionError

__all__ = [
    "FORMAT_VERSION",
    "PURPOSE",
    "BadCopy",
    "Vault",
    "VaultConfig",
    "VaultCopy",
    "VaultError",
    "VaultNotFoundError",
    "VaultRecord",
    "VaultTamperedError",
    "VaultVerification",
    "object_aad",
    "slot_of",
    "vault_gcm_key",
]

PURPOSE: Final = "vault"
FORMAT_VERSION: Final = 1
INDEX_FILE: Final = "index.qsc"
OBJECTS_DIR: Final = "objects"
NONCES_DIR: Final = "nonces"
LOCK_FILE: Final = "vault.lock"
_INDEX_MAGIC: Final = b"QSC-VAULT-INDEX"
_INDEX_RE: Final = re.compile(rb"QSC-VAULT-INDEX (\d{1,4}) revision=(\d{1,19})")
_MAX_HEADER: Final = 64
_MAX_INDEX_BYTES: Final = 64 << 20
_SEAL_OVERHEAD: Final = 256  # header + tag, generously
_OBJECT_RE: Final = re.compile(r"[0-9a-f]{64}\.\d{1,19}")


class VaultError(BetaError, FailedPreconditionError):
    """The vault cannot do this (content that is not the known-good one, too large, no keys)."""


class VaultTamperedError(IntegrityError):
    """A vault object or the index failed verification: never trusted, never healed from."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"vault {what} failed verification ({reason})")
        self.what = what
        self.reason = reason


class VaultNotFoundError(BetaNotFoundError):
    """No copy of this path (or of this version or hash) is in the vault."""


@dataclass(frozen=True)
class VaultConfig:
    """Where the vault lives, which paths it may hold, how many versions it keeps."""

    directory: Path
    roots: tuple[Path, ...]  # only paths at or below one of these are stored or restored
    versions: int = 5  # retained per path, newest first
    max_bytes: int = 16 << 20  # per copy: config files, not disk images

    def __post_init__(self) -> None:
        raw = os.fspath(self.directory)
        if not raw.startswith("/"):
            raise ValueError(f"vault directory must be absolute, got {raw!r}")
        object.__setattr__(self, "directory", Path(os.path.normpath(raw)))
        roots = tuple(Path(check_path(os.path.normpath(os.fspath(r)))) for r in self.roots)
        object.__setattr__(self, "roots", roots)
        if self.versions < 1:
            raise ValueError("vault versions must be at least 1")
        if not 1 <= self.max_bytes <= 1 << 30:
            raise ValueError("vault max_bytes must be 1 B..1 GiB")

    def allows(self, path: str) -> bool:
        for root in self.roots:
            r = os.fspath(root)
            if path == r or r == "/" or path.startswith(r + "/"):
                return True
        return False


@dataclass(frozen=True)
class VaultRecord:
    """One retained version of one path, as the index lists it."""

    path: str
    version: int
    blake3: bytes
    size: int
    baseline_version: int = 0
    created: float = 0.0
    key_id: str = ""

    @property
    def object_name(self) -> str:
        return f"{slot_of(self.path)}.{self.version}"


@dataclass(frozen=True)
class BadCopy:
    """A retained copy that failed verification, and why (never its content)."""

    record: VaultRecord
    reason: str


@dataclass(frozen=True)
class VaultVerification:
    """What `Vault.verify` found: how many copies it opened, and the bad ones."""

    checked: int
    bad: tuple[BadCopy, ...]

    @property
    def ok(self) -> bool:
        return not self.bad


@dataclass(frozen=True, repr=False)
class VaultCopy:
    """A verified copy: its record and the plaintext (never shown by repr)."""

    record: VaultRecord
    content: bytes

    def __repr__(self) -> str:
        r = self.record
        return f"VaultCopy(path={r.path!r}, version={r.version}, size={r.size})"


@dataclass(frozen=True)
class _PathEntry:
    next_version: int
    records: tuple[VaultRecord, ...]  # oldest first


@dataclass(frozen=True)
class _Index:
    revision: int = 0
    entries: Mapping[str, _PathEntry] = field(default_factory=lambda: MappingProxyType({}))


# --- format helpers -------------------------------------------------------------------------


def slot_of(path: str) -> str:
    """The object name stem of `path`: a hash, so no stored name is ever derived from the path."""
    return blake3_256(encode_fields("qsc-vault-slot", os.fsencode(path))).hex()


def object_aad(path: str, version: int, digest: bytes) -> bytes:
    return encode_fields("qsc-vault-object", FORMAT_VERSION, os.fsencode(path), version, digest)


def vault_gcm_key(purpose_key: AeadKey) -> AeadKey:
    """The AES-256-GCM key of one vault purpose key: HKDF-separated, id `<purpose id>/gcm`."""
    return gcm_key(purpose_key, "vault-aes-256-gcm")


def _index_header(revision: int) -> bytes:
    return b"%s %d revision=%d\n" % (_INDEX_MAGIC, FORMAT_VERSION, revision)


def _encode_index(index: _Index) -> bytes:
    doc = {
        "format": "qsc-vault-index",
        "format_version": FORMAT_VERSION,
        "revision": index.revision,
        "paths": {
            path: {
                "next": pe.next_version,
                "versions": [
                    [r.version, r.blake3.hex(), r.size, r.baseline_version, r.created, r.key_id]
                    for r in pe.records
                ],
            }
            for path, pe in sorted(index.entries.items())
        },
    }
    # ensure_ascii: non-UTF-8 names (surrogate escapes) survive as \udcXX.
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _decode_index(plain: bytes, revision: int) -> _Index:
    doc = json.loads(plain.decode("ascii"))
    if (
        not isinstance(doc, dict)
        or doc.get("format") != "qsc-vault-index"
        or doc.get("format_version") != FORMAT_VERSION
        or doc.get("revision") != revision
        or not isinstance(doc.get("paths"), dict)
    ):
        raise ValueError("not a vault index")
    entries: dict[str, _PathEntry] = {}
    for path, item in doc["paths"].items():
        nxt, versions = item["next"], item["versions"]
        if type(nxt) is not int or not isinstance(versions, list):
            raise ValueError("malformed entry")
        records = []
        for version, digest, size, bversion, created, key_id in versions:
            if not all(type(i) is int for i in (version, size, bversion)):
                raise ValueError("malformed record")
            records.append(
                VaultRecord(
                    path, version, bytes.fromhex(digest), size, bversion, float(created), key_id
                )
            )
        entries[check_path(path)] = _PathEntry(nxt, tuple(records))
    return _Index(revision, MappingProxyType(entries))


# --- the vault ------------------------------------------------------------------------------


def _private_dir(parent_fd: int | None, path: Path) -> int:
    """Create (0700) or open a directory we own, refusing a symlink or loose permissions."""
    name = path.name if parent_fd is not None else os.fspath(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise VaultError(f"vault directory {path} is a symlink or not a directory") from None
        raise VaultError(f"vault directory {path}: cannot open ({exc.strerror})") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise VaultError(
            f"vault directory {path} must be owned by this user and mode 0700 "
            f"(is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        )
    return fd


class Vault:
    """Known-good copies, see the module docstring. Thread-safe; one sealing process at a time
    (the nonce counter is locked), any number of readers."""

    def __init__(self, config: VaultConfig, keys: KeyManager) -> None:
        self.config = config
        self._keys = keys
        self._lock = threading.RLock()
        make_private_dirs(config.directory.parent)
        self._dir_fd = _private_dir(None, config.directory)
        try:
            self._obj_fd = _private_dir(self._dir_fd, config.directory / OBJECTS_DIR)
            nonce_fd = _private_dir(self._dir_fd, config.directory / NONCES_DIR)
            os.close(nonce_fd)  # checked; CounterNonceSource works with paths
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._index = _Index()
        self._stamp: tuple[int, int, int] | None = None
        self._highest = 0
        self._nonces: CounterNonceSource | None = None
        self._sealer: Sealer | None = None
        self._closed = False
        with self._lock:
            self._current()  # verify the index now: a tampered vault is reported at start

    def __repr__(self) -> str:
        return f"Vault({os.fspath(self.config.directory)!r})"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._nonces is not None:
                self._nonces.close()
            self._nonces = self._sealer = None
            os.close(self._obj_fd)
            os.close(self._dir_fd)

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries --

    def paths(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._current().entries))

    def versions(self, path: str) -> tuple[VaultRecord, ...]:
        """Retained versions of `path`, newest first (empty if none)."""
        path = self._allowed(path)
        with self._lock:
            pe = self._current().entries.get(path)
            return tuple(reversed(pe.records)) if pe else ()

    @property
    def revision(self) -> int:
        with self._lock:
            return self._current().revision

    def get(self, path: str, version: int | None = None) -> VaultCopy:
        """The newest (or the given) version of `path`, decrypted and verified."""
        for rec in self.versions(path):
            if version is None or rec.version == version:
                return self._read(rec)
        raise VaultNotFoundError(f"no vault copy of {path}" + (f" v{version}" if version else ""))

    def find(self, path: str, digest: bytes) -> VaultCopy:
        """The newest version of `path` whose content hashes to `digest` (the baseline's)."""
        for rec in self.versions(path):
            if hmac.compare_digest(rec.blake3, digest):
                return self._read(rec)
        raise VaultNotFoundError(f"no vault copy of {path} matches the baseline hash")

    def verify(self, *, stop: Callable[[], bool] | None = None) -> VaultVerification:
        """Open every retained copy (AEAD) and re-hash it against the index, one at a time
        (bounded memory; the lock is held per copy, so heals interleave). The index itself is
        verified first: VaultTamperedError when it does not, as at open. `stop` ends early."""
        with self._lock:
            records = [r for pe in self._current().entries.values() for r in pe.records]
        bad: list[BadCopy] = []
        checked = 0
        for rec in records:
            if stop is not None and stop():
                break
            with self._lock:
                pe = self._current().entries.get(rec.path)
                if pe is None or rec not in pe.records:
                    continue  # replaced or forgotten meanwhile
                checked += 1
                try:
                    self._read(rec)
                except VaultTamperedError as exc:
                    bad.append(BadCopy(rec, exc.reason))
        return VaultVerification(checked, tuple(bad))

    def quarantine(self, bad: Iterable[BadCopy]) -> int:
        """Take these copies out of the index (a revision of its own) and rename their objects
        aside as `<object>.tampered`; how many were still listed."""
        drop = {(b.record.path, b.record.version) for b in bad}
        if not drop:
            return 0
        with self._lock, self._flock():
            index = self._current()
            entries = dict(index.entries)
            gone: list[VaultRecord] = []
            for path, pe in index.entries.items():
                keep = tuple(r for r in pe.records if (path, r.version) not in drop)
                if len(keep) != len(pe.records):
                    gone += [r for r in pe.records if (path, r.version) in drop]
                    entries[path] = _PathEntry(pe.next_version, keep)
            if not gone:
                return 0
            self._write_index(_Index(index.revision + 1, MappingProxyType(entries)))
            for rec in gone:  # after the index stops naming them
                with contextlib.suppress(FileNotFoundError):
                    os.rename(
                        rec.object_name,
                        rec.object_name + ".tampered",
                        src_dir_fd=self._obj_fd,
                        dst_dir_fd=self._obj_fd,
                    )
            return len(gone)

    # -- writes --

    def put(
        self,
        path: str,
        data: bytes,
        *,
        expected_blake3: bytes | None = None,
        baseline_version: int = 0,
        now: float | None = None,
    ) -> VaultRecord:
        """Store `data` as the next version of `path` (nothing new if the newest version already
        holds it). `expected_blake3`: refuse content that does not hash to it."""
        path = self._allowed(path)
        if len(data) > self.config.max_bytes:
            raise VaultError(
                f"{path}: {len(data)} bytes, the vault keeps at most {self.config.max_bytes}"
            )
        digest = blake3_256(data)
        if expected_blake3 is not None and not hmac.compare_digest(digest, expected_blake3):
            raise VaultError(f"{path}: content does not match the expected (baseline) hash")
        with self._lock, self._flock():
            index = self._current()
            pe = index.entries.get(path)
            if pe and pe.records and hmac.compare_digest(pe.records[-1].blake3, digest):
                try:
                    self._read(pe.records[-1])
                except VaultTamperedError:
                    pass  # the copy we would keep is bad: write a fresh version below
                else:
                    return pe.records[-1]
            version = pe.next_version if pe else 1
            sealer = self._active_sealer(index)
            blob = sealer.seal(data, object_aad(path, version, digest))
            rec = VaultRecord(
                path=path,
                version=version,
                blake3=digest,
                size=len(data),
                baseline_version=baseline_version,
                created=time.time() if now is None else now,
                key_id=sealer.key_id,
            )
            write_atomic_at(self._obj_fd, rec.object_name, blob)
            records = (*(pe.records if pe else ()), rec)
            keep, drop = records[-self.config.versions :], records[: -self.config.versions]
            entries = dict(index.entries)
            entries[path] = _PathEntry(version + 1, keep)
            self._write_index(_Index(index.revision + 1, MappingProxyType(entries)))
            for old in drop:  # after the index stops naming them
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old.object_name, dir_fd=self._obj_fd)
            return rec

    def capture(
        self, path: str, expected_blake3: bytes, *, baseline_version: int = 0
    ) -> VaultRecord:
        """Store the live file at `path`, read without following any symlink, provided it still
        hashes to `expected_blake3` (what the baseline recorded)."""
        path = self._allowed(path)
        with open_parent(path) as (dir_fd, name):
            try:
                data = read_regular_at(dir_fd, name, self.config.max_bytes)
            except ValueError as exc:
                raise VaultError(f"{path}: {exc}") from None
        return self.put(
            path, data, expected_blake3=expected_blake3, baseline_version=baseline_version
        )

    def forget(self, path: str) -> bool:
        """Drop every version of `path`; whether there was one."""
        path = self._allowed(path)
        with self._lock, self._flock():
            index = self._current()
            pe = index.entries.get(path)
            if pe is None:
                return False
            entries = {p: e for p, e in index.entries.items() if p != path}
            self._write_index(_Index(index.revision + 1, MappingProxyType(entries)))
            for rec in pe.records:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(rec.object_name, dir_fd=self._obj_fd)
            return True

    # -- internals --

    def _allowed(self, path: str) -> str:
        check_path(path)
        if not self.config.allows(path):
            raise UnsafePathError(f"{path} is outside the vault's allowed roots")
        return path

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        fd = os.open(
            LOCK_FILE,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._dir_fd,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _decryption_keys(self) -> dict[str, AeadKey]:
        try:
            purpose = self._keys.decryption_keys(PURPOSE)
        except CryptoError as exc:
            raise VaultError(f"vault keys unavailable ({exc})") from None
        return {k.key_id: k for k in map(vault_gcm_key, purpose.values())}

    def _active_sealer(self, index: _Index) -> Sealer:
        try:
            key = vault_gcm_key(self._keys.active_key(PURPOSE))
        except CryptoError as exc:
            raise VaultError(f"vault keys unavailable ({exc})") from None
        if self._sealer is not None and self._sealer.key_id == key.key_id:
            return self._sealer
        if self._nonces is not None:  # rotated: the old key seals no more
            self._nonces.close()
            self._nonces = self._sealer = None
        try:
            nonces = open_counter_nonces(
                self.config.directory / NONCES_DIR,
                key.key_id,
                key_used=lambda: self._key_used(key.key_id, index),
            )
        except NonceStateLostError as exc:
            raise VaultTamperedError("nonce state", str(exc)) from None
        except CryptoError as exc:
            raise VaultError(f"vault nonce state: {exc}") from None
        self._nonces = nonces
        self._sealer = Sealer(key, nonces)
        return self._sealer

    def _key_used(self, key_id: str, index: _Index) -> bool:
        """Whether anything here was sealed under `key_id` (the index, or any object header,
        authenticated or not: for deciding not to restart a counter, suspicion is enough)."""
        if any(r.key_id == key_id for pe in index.entries.values() for r in pe.records):
            return True
        names = [INDEX_FILE] + [f"{OBJECTS_DIR}/{n}" for n in os.listdir(self._obj_fd)]
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
            except OSError:
                continue
            try:
                head = os.read(fd, _MAX_HEADER + 128)
            finally:
                os.close(fd)
            if name == INDEX_FILE:
                head = head[head.find(b"\n") + 1 :]
            with contextlib.suppress(DecryptionError):
                if sealed_key_id(head) == key_id:
                    return True
        return False

    def _read(self, rec: VaultRecord) -> VaultCopy:
        what = f"copy of {rec.path} v{rec.version}"
        try:
            blob = read_regular_at(
                self._obj_fd, rec.object_name, self.config.max_bytes + _SEAL_OVERHEAD
            )
        except FileNotFoundError:
            raise VaultTamperedError(what, "object missing") from None
        except (UnsafePathError, ValueError):
            raise VaultTamperedError(what, "object is not a plain file of plausible size") from None
        try:
            plain = open_sealed(
                blob, self._decryption_keys(), object_aad(rec.path, rec.version, rec.blake3)
            )
        except DecryptionError:
            raise VaultTamperedError(what, "does not open") from None
        # The AAD already binds the hash; re-hashing the plaintext is the read-time check the
        # design asks for, and it costs nothing next to the decryption.
        if len(plain) != rec.size or not hmac.compare_digest(blake3_256(plain), rec.blake3):
            raise VaultTamperedError(what, "content hash mismatch")
        return VaultCopy(rec, plain)

    def _current(self) -> _Index:
        """The index as on disk (another process may have written it), verified."""
        try:
            st = os.stat(INDEX_FILE, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if self._highest or any(_OBJECT_RE.fullmatch(n) for n in os.listdir(self._obj_fd)):
                raise VaultTamperedError("index", "missing while copies exist") from None
            return self._index
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._index = self._load_index()
            self._stamp = stamp
        return self._index

    def _load_index(self) -> _Index:
        try:
            raw = read_regular_at(self._dir_fd, INDEX_FILE, _MAX_INDEX_BYTES)
        except (UnsafePathError, ValueError):
            raise VaultTamperedError("index", "not a plain file of plausible size") from None
        end = raw.find(b"\n", 0, _MAX_HEADER)
        match = _INDEX_RE.fullmatch(raw[:end]) if end > 0 else None
        if match is None or int(match.group(1)) != FORMAT_VERSION:
            raise VaultTamperedError("index", "malformed header")
        revision = int(match.group(2))
        try:
            plain = open_sealed(raw[end + 1 :], self._decryption_keys(), raw[: end + 1])
            index = _decode_index(plain, revision)
        except DecryptionError:
            raise VaultTamperedError("index", "does not open") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, UnsafePathError):
            raise VaultTamperedError("index", "malformed document") from None
        if revision < self._highest:
            raise VaultTamperedError(
                "index",
                f"revision {revision} is older than {self._highest} (an old index put back)",
            )
        self._highest = revision
        return index

    def _write_index(self, index: _Index) -> None:
        header = _index_header(index.revision)
        blob = header + self._active_sealer(index).seal(_encode_index(index), header)
        write_atomic_at(self._dir_fd, INDEX_FILE, blob)
        st = os.stat(INDEX_FILE, dir_fd=self._dir_fd, follow_symlinks=False)
        self._index, self._highest = index, index.revision
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    # For tests and status: the key id new copies are sealed under.
    def active_key_id(self) -> str:
        return vault_gcm_key(self._keys.active_key(PURPOSE)).key_id
