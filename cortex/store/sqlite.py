"""`SqliteEventStore`: the embedded event store, one SQLite database in WAL mode.

Layout (the directory 0700, every file 0600)::

    <dir>/events.db (-wal, -shm)   the database (`cortex.store.schema`)
    <dir>/nonces/<key id>.json     the AES-GCM nonce counter of one payload key (crypto.nonces)
    <dir>/store.lock               flock held by the one writer

**Exactly once.** `append_batch` stores a guardian's events and its cursor in one
`BEGIN IMMEDIATE` transaction, skipping events whose (guardian id, seq) is already stored, and
moves the chain head (`store_meta.head`) in the same transaction: a crash at any instant leaves
all of it or none of it, so a restarted ingest resumes from the stored cursor and stores each
seq once. `synchronous=FULL` makes a commit durable on power loss too (so an exported checkpoint
never runs ahead of what survived).

**Keys.** Payloads are sealed with AES-256-GCM under `crypto.subkeys.gcm_key` of the keyring's
`event-store` purpose key and the store id (the active epoch's; older epochs still open; two
stores under one keyring never share a key), nonces from a
`CounterNonceSource` per key id (reserved durably before use, and the highest counter used is
also recorded in `sealing_keys` inside each transaction, so a lost or rolled-back state file is
refused rather than restarted). The AAD binds store id, guardian id, seq, event id and key id.
Blind index terms are HMAC-SHA256 under a subkey of the `blind-index` purpose key of the epoch
the store was created in, pinned by id in `store_meta` (a blind index cannot follow rotation
without re-indexing every row; its key never seals anything). The store's binding (format,
store id, Cortex identity, keyring component, key ids) and its head carry an HMAC under a
subkey of the creation epoch's `event-store` key.

**Refusals at open** (`StoreOpenError`, naming the file and the reason, never a new store over
an old one): a missing database beside nonce state, a file that is not SQLite or not a store,
an unsupported format version, another Cortex's database (its keys are not in this keyring, or
its identity is another Cortex's), a binding that fails its MAC (wrong key or edited), a head
that does not match the last record (truncated or edited; read-only opens allow it so `verify`
can report it), loose permissions, a second writer, a missing or stale nonce state file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from cortex import fields
from cortex.errors import (
    StoreArgumentError,
    StoreConflictError,
    StoreError,
    StoreIntegrityError,
    StoreOpenError,
    StoreReadOnlyError,
)
from cortex.store import codec, runs, schema
from cortex.store.api import (
    Checkpoint,
    Page,
    Position,
    Progress,
    RetentionResult,
    VerifyReport,
    WhereClause,
)
from cortex.store.checkpoint import CheckpointSigner
from cortex.store.verify import StoreView, verify_store
from crypto.aead import AeadKey, RawAead
from crypto.errors import CryptoError, DecryptionError
from crypto.files import PRIVATE_DIR_MODE, PRIVATE_MODE, make_private_dirs
from crypto.kdf import build_info, hkdf
from crypto.keyring import KeyManager
from crypto.nonces import CounterNonceSource
from crypto.subkeys import derive_subkey, gcm_key, open_counter_nonces
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import event_pb2

__all__ = [
    "BLIND_PURPOSE",
    "DB_FILE",
    "PURPOSE",
    "SqliteEventStore",
    "StoreConfig",
]

PURPOSE: Final = "event-store"
BLIND_PURPOSE: Final = "blind-index"
GCM_LABEL: Final = "event-store-aes-256-gcm"
BINDING_LABEL: Final = "event-store-binding"
BLIND_LABEL: Final = "blind-index-hmac-sha256"
PAGE_LABEL: Final = "read-api-page-token"  # an HKDF label, not a secret
DB_FILE: Final = "events.db"
NONCES_DIR: Final = "nonces"
LOCK_FILE: Final = "store.lock"
MAX_LIMIT: Final = 10_000
_MAX_SEQ: Final = 2**63  # SQLite integers are signed 64-bit
_HEAD_LEN: Final = 8 + 32 + 32
_CHUNK: Final = 500  # rows per executemany / IN list
_BLIND_CACHE: Final = 65_536  # (field, value) -> term entries kept before starting over

Clock = Callable[[], int]  # nanoseconds since the epoch


@dataclass(frozen=True)
class StoreConfig:
    """Where the store lives and how often it checkpoints."""

    directory: Path
    checkpoint_every: int = 10_000  # records between signed checkpoints...
    checkpoint_interval: float = 60.0  # ...or seconds, whichever comes first (at an append)
    synchronous: str = "FULL"  # FULL: durable on power loss; NORMAL: on process crash only

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be positive")
        if self.checkpoint_interval <= 0:
            raise ValueError("checkpoint_interval must be positive")
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")

    @property
    def db_path(self) -> Path:
        return self.directory / DB_FILE


@dataclass(frozen=True)
class _Binding:
    store_id: str
    identity: str
    binding_key: bytes
    blind_key: bytes


def _private_mode_problem(path: Path, st: os.stat_result, want: int) -> str | None:
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not this user"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}; it must be {want:04o} (chmod {want:o})"
    return None


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class SqliteEventStore:
    """The embedded `EventStore` (see the module docstring). Thread-safe: one writer
    connection and one reader connection, each behind its own lock."""

    def __init__(
        self,
        config: StoreConfig,
        keys: KeyManager,
        conn: sqlite3.Connection,
        reader: sqlite3.Connection,
        binding: _Binding,
        signer: CheckpointSigner | None,
        lock_fd: int | None,
        clock: Clock,
    ) -> None:
        # Use open(): it checks everything before this runs.
        self.config = config
        self._keys = keys
        self._conn = conn
        self._reader = reader
        self._binding = binding
        self._signer = signer
        self._lock_fd = lock_fd
        self._clock = clock
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._open_keys: dict[str, AeadKey] = {}
        self._blind_cache: dict[tuple[str, str], bytes] = {}
        self._nonces: CounterNonceSource | None = None
        self._aead: RawAead | None = None
        self._sealing_key_id = ""
        self._closed = False
        self._head_rowid, self._head_hash = self._read_head(conn)
        last = conn.execute(
            "SELECT count, time_ns FROM checkpoints WHERE kind = 'head' ORDER BY count DESC, "
            "id DESC LIMIT 1"
        ).fetchone()
        self._checkpoint_count: int = 0 if last is None else last[0]
        self._checkpoint_ns: int = clock() if last is None else last[1]
        row = conn.execute("SELECT max(stored_ns) FROM events").fetchone()
        self._last_stored_ns = int(row[0] or 0)
        # Playbook runs (the delivery outbox) live beside the events; stores made before
        # playbooks get their tables when a writer first opens them.
        if lock_fd is not None:
            conn.executescript(runs.RUN_SCHEMA)
        self.runs = runs.RunTable(self._run_transaction, reader, self._read_lock)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        config: StoreConfig | Path,
        keys: KeyManager,
        *,
        signer: CheckpointSigner | None = None,
        create: bool = False,
        readonly: bool = False,
        clock: Clock = time.time_ns,
    ) -> SqliteEventStore:
        """Open the store (with `create`, create it when the directory holds none).

        A writer needs `signer` (checkpoints are signed); `readonly` opens for queries, export
        and verify, beside a running writer. StoreOpenError names the file and the reason."""
        if not isinstance(config, StoreConfig):
            config = StoreConfig(config)
        if not readonly and signer is None:
            raise StoreOpenError(
                config.db_path, "a writer needs the Cortex's signing key (checkpoints are signed)"
            )
        directory, db = config.directory, config.db_path
        cls._check_directory(directory, create=create and not readonly)
        lock_fd = None if readonly else cls._writer_lock(directory)
        try:
            exists = db.exists() or db.is_symlink()
            if not exists:
                nonce_dir = directory / NONCES_DIR
                if nonce_dir.is_dir() and any(nonce_dir.glob("*.json")):
                    raise StoreOpenError(
                        db,
                        f"is missing, but {nonce_dir} holds nonce state of keys that sealed "
                        "events: restore the database from backup (a new store is never "
                        "started over an old one)",
                    )
                if not create or readonly:
                    raise StoreOpenError(db, "no event store here (create one first)")
                assert signer is not None
                conn = cls._create(config, keys, signer, clock)
            else:
                conn = cls._connect(db, readonly=readonly, config=config)
            store: SqliteEventStore | None = None
            try:
                binding = cls._check_binding(db, conn, keys, signer)
                reader = cls._connect(db, readonly=True, config=config)
                store = cls(config, keys, conn, reader, binding, signer, lock_fd, clock)
                if not readonly:
                    store._check_head()
                    store._register_signer()
                    store._sealing()  # a lost or stale nonce state is refused now, not later
            except BaseException:
                if store is None:
                    conn.close()
                else:
                    store._lock_fd = None  # closed below, once
                    store._release()
                raise
            return store
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @classmethod
    def open_with_keyring(
        cls,
        config: StoreConfig | Path,
        keyring: Path,
        *,
        component: str | None = None,
        signer: CheckpointSigner | None = None,
        create: bool = False,
        readonly: bool = False,
        clock: Clock = time.time_ns,
    ) -> SqliteEventStore:
        """`open` with the keyring in `keyring`: a missing or unusable key is a StoreOpenError
        naming the database and the keyring's own reason (which names the key file)."""
        if not isinstance(config, StoreConfig):
            config = StoreConfig(config)
        try:
            keys = KeyManager.open(keyring, component)
        except CryptoError as exc:
            raise StoreOpenError(config.db_path, f"cannot open its keyring: {exc}") from None
        return cls.open(config, keys, signer=signer, create=create, readonly=readonly, clock=clock)

    @staticmethod
    def _check_directory(directory: Path, *, create: bool) -> None:
        if not directory.exists():
            if not create:
                raise StoreOpenError(directory, "the store directory does not exist")
            try:
                make_private_dirs(directory)
            except OSError as exc:
                raise StoreOpenError(directory, f"cannot create ({exc.strerror})") from None
        try:
            st = os.stat(directory, follow_symlinks=False)
        except OSError as exc:
            raise StoreOpenError(directory, f"cannot read ({exc.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StoreOpenError(directory, "is not a directory (or is a symlink)")
        problem = _private_mode_problem(directory, st, PRIVATE_DIR_MODE)
        if problem:
            raise StoreOpenError(directory, problem)
        nonces = directory / NONCES_DIR
        if create and not nonces.exists():
            make_private_dirs(nonces)

    @staticmethod
    def _writer_lock(directory: Path) -> int:
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_MODE)
        except OSError as exc:
            raise StoreOpenError(path, f"cannot open the writer lock ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreOpenError(
                directory / DB_FILE, "is open for writing by another process (one writer)"
            ) from None
        return fd

    @staticmethod
    def _connect(db: Path, *, readonly: bool, config: StoreConfig) -> sqlite3.Connection:
        try:
            st = os.stat(db, follow_symlinks=False)
        except OSError as exc:
            raise StoreOpenError(db, f"cannot read ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreOpenError(db, "is not a regular file (or is a symlink)")
        problem = _private_mode_problem(db, st, PRIVATE_MODE)
        if problem:
            raise StoreOpenError(db, problem)
        mode = "ro" if readonly else "rw"
        try:
            conn = sqlite3.connect(
                f"file:{db}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
            )
        except sqlite3.Error as exc:
            raise StoreOpenError(db, f"cannot open ({exc})") from None
        # An edited row may hold invalid UTF-8 where text belongs: read it (it will not match
        # its chain hash or open) instead of failing the whole query or verify.
        conn.text_factory = _lenient_text
        try:
            # Look before writing anything: a foreign file must be left exactly as it is.
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
            missing = [t for t in schema.TABLES if t not in tables]
            if missing:
                conn.close()
                raise StoreOpenError(
                    db,
                    f"is not a QSC event store (no table {', '.join(missing)}); refusing to use it",
                )
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {config.synchronous}")
            conn.execute("PRAGMA query_only = 1" if readonly else "PRAGMA query_only = 0")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreOpenError(db, f"is not an SQLite database or is corrupted ({exc})") from None
        return conn

    @classmethod
    def _create(
        cls, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner, clock: Clock
    ) -> sqlite3.Connection:
        db = config.db_path
        try:
            fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_MODE)
            os.fchmod(fd, PRIVATE_MODE)  # the umask must not narrow or widen it
            os.close(fd)
        except OSError as exc:
            raise StoreOpenError(db, f"cannot create ({exc.strerror})") from None
        try:
            conn = sqlite3.connect(
                f"file:{db}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {config.synchronous}")
            store_id = secrets.token_hex(16)
            try:
                binding_key = keys.active_key(PURPOSE)
                blind_key = keys.active_key(BLIND_PURPOSE)
            except CryptoError as exc:
                raise StoreOpenError(db, f"cannot get the store keys ({exc})") from None
            values: dict[str, str | int] = {
                schema.META_FORMAT: codec.FORMAT,
                schema.META_VERSION: codec.FORMAT_VERSION,
                schema.META_STORE_ID: store_id,
                schema.META_CREATED: clock(),
                schema.META_IDENTITY: signer.identity,
                schema.META_COMPONENT: keys.component,
                schema.META_BINDING_KEY: binding_key.key_id,
                schema.META_BLIND_KEY: blind_key.key_id,
            }
            mac_key = derive_subkey(binding_key, BINDING_LABEL)
            mac = codec.binding_mac(mac_key, [values[n] for n in schema.BINDING_FIELDS])
            head = cls._head_value(mac_key, store_id, 0, codec.genesis(store_id))
            conn.execute("BEGIN IMMEDIATE")
            conn.executescript(schema.SCHEMA)  # executescript commits first: re-begin below
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO store_meta (name, value) VALUES (?, ?)",
                [*values.items(), (schema.META_BINDING_MAC, mac), (schema.META_HEAD, head)],
            )
            conn.execute("COMMIT")
            conn.close()
        except BaseException:
            # Nothing was ever sealed into it: removing the half-made file is safe.
            with contextlib.suppress(OSError):
                for suffix in ("", "-wal", "-shm"):
                    os.unlink(f"{db}{suffix}")
            raise
        return cls._connect(db, readonly=False, config=config)

    @staticmethod
    def _meta(conn: sqlite3.Connection) -> dict[str, Any]:
        return dict(conn.execute("SELECT name, value FROM store_meta").fetchall())

    @classmethod
    def _check_binding(
        cls,
        db: Path,
        conn: sqlite3.Connection,
        keys: KeyManager,
        signer: CheckpointSigner | None,
    ) -> _Binding:
        try:
            meta = cls._meta(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreOpenError(db, f"is corrupted ({exc})") from None
        if meta.get(schema.META_FORMAT) != codec.FORMAT:
            raise StoreOpenError(db, "is not a QSC event store (no store metadata)")
        if meta.get(schema.META_VERSION) != codec.FORMAT_VERSION:
            raise StoreOpenError(
                db, f"has unsupported format version {meta.get(schema.META_VERSION)!r}"
            )
        values = [meta.get(n) for n in schema.BINDING_FIELDS]
        if not all(isinstance(v, str | int) for v in values):
            raise StoreOpenError(db, "has incomplete store metadata (edited or corrupted)")
        component = meta[schema.META_COMPONENT]
        if component != keys.component:
            raise StoreOpenError(
                db,
                f"belongs to the keyring of component {component!r}, but the keyring in "
                f"{keys.config.directory} is {keys.component!r}: wrong keyring",
            )
        binding_id, blind_id = meta[schema.META_BINDING_KEY], meta[schema.META_BLIND_KEY]
        try:
            binding_key = keys.key_for_id(binding_id)
            blind_key = keys.key_for_id(blind_id)
        except CryptoError:
            raise StoreOpenError(
                db,
                f"was created under key {binding_id}, which the keyring in "
                f"{keys.config.directory} does not hold: the database belongs to another "
                "Cortex, or this is not the keyring it was created with",
            ) from None
        mac_key = derive_subkey(binding_key, BINDING_LABEL)
        stored_mac = meta.get(schema.META_BINDING_MAC)
        expected = codec.binding_mac(mac_key, values)  # type: ignore[arg-type]
        if not isinstance(stored_mac, bytes) or not codec.same(stored_mac, expected):
            raise StoreOpenError(
                db, "store metadata does not authenticate under this keyring (wrong key or edited)"
            )
        identity = meta[schema.META_IDENTITY]
        if signer is not None and signer.identity != identity:
            raise StoreOpenError(
                db, f"belongs to Cortex {identity}, not {signer.identity or 'this one'}"
            )
        return _Binding(
            meta[schema.META_STORE_ID],
            identity,
            mac_key,
            derive_subkey(blind_key, BLIND_LABEL),
        )

    @staticmethod
    def _head_value(mac_key: bytes, store_id: str, rowid: int, head: bytes) -> bytes:
        return rowid.to_bytes(8, "big") + head + codec.head_mac(mac_key, store_id, rowid, head)

    def _read_head(self, conn: sqlite3.Connection) -> tuple[int, bytes]:
        """The head as recorded (not yet checked against the records: see _check_head)."""
        row = conn.execute(
            "SELECT value FROM store_meta WHERE name = ?", (schema.META_HEAD,)
        ).fetchone()
        value = row[0] if row else b""
        if not isinstance(value, bytes) or len(value) != _HEAD_LEN:
            return -1, b""
        return int.from_bytes(value[:8], "big"), value[8:40]

    def head_authentic(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            "SELECT value FROM store_meta WHERE name = ?", (schema.META_HEAD,)
        ).fetchone()
        value = row[0] if row else b""
        if not isinstance(value, bytes) or len(value) != _HEAD_LEN:
            return False
        rowid, head = int.from_bytes(value[:8], "big"), value[8:40]
        expected = codec.head_mac(self._binding.binding_key, self._binding.store_id, rowid, head)
        return codec.same(value[40:], expected)

    def _check_head(self) -> None:
        db = self.config.db_path
        if not self.head_authentic(self._conn):
            raise StoreOpenError(
                db, "the store head does not authenticate (edited); run `store verify`"
            )
        last = self._conn.execute(
            "SELECT rowid, chain FROM events ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        if last is None:
            cut = self._conn.execute(
                "SELECT count, head FROM checkpoints WHERE kind = 'cut' ORDER BY count DESC LIMIT 1"
            ).fetchone()
            last = (0, codec.genesis(self._binding.store_id)) if cut is None else cut
        rowid, head = last
        if rowid != self._head_rowid or not codec.same(head, self._head_hash):
            raise StoreOpenError(
                db,
                f"the store head says {self._head_rowid} records but the last record is {rowid}"
                " or differs (truncated tail or edited); run `store verify`",
            )

    def _register_signer(self) -> None:
        assert self._signer is not None
        self._conn.execute(
            "INSERT OR IGNORE INTO signers (key_id, certificate) VALUES (?, ?)",
            (self._signer.key_id, self._signer.certificate_pem),
        )

    # -- properties ------------------------------------------------------------------------

    @property
    def store_id(self) -> str:
        return self._binding.store_id

    @property
    def identity(self) -> str:
        """The SPIFFE ID of the Cortex this store belongs to."""
        return self._binding.identity

    @property
    def head(self) -> tuple[int, bytes]:
        """(records ever appended, chain hash of the last one)."""
        return self._head_rowid, self._head_hash

    def __repr__(self) -> str:
        return f"SqliteEventStore({str(self.config.db_path)!r})"

    # -- keys ------------------------------------------------------------------------------

    def blind(self, field: str, value: str) -> bytes:
        """The blind index term of `value` in the blind field `field` (for `Filter.to_sql`)."""
        term = self._blind_cache.get((field, value))
        if term is None:
            if field not in fields.BLIND_FIELDS:
                raise StoreArgumentError(f"{field!r} is not a blind field")
            # Users, paths and executables repeat a lot: remember recent terms (bounded).
            if len(self._blind_cache) >= _BLIND_CACHE:
                self._blind_cache.clear()
            term = codec.blind_term(self._binding.blind_key, field, value)
            self._blind_cache[(field, value)] = term
        return term

    def run_key_term(self, correlation_key: str) -> bytes:
        """The keyed term a playbook run keeps of its correlation key (suppression), so the
        run table names no user or host in clear."""
        key = self._binding.blind_key
        return codec.blind_term(key, "playbook.correlation_key", correlation_key)

    def token_key(self) -> bytes:
        """The read API's page-token key (`cortex.paging`): derived from the store's binding key,
        so tokens stay valid across restarts and key rotation, and differ between stores."""
        return hkdf(self._binding.binding_key, build_info(PAGE_LABEL, self._binding.store_id))

    def _sealing(self) -> tuple[RawAead, CounterNonceSource, str]:
        """The active payload key and its nonce counter (reopened after a rotation)."""
        try:
            key = gcm_key(self._keys.active_key(PURPOSE), GCM_LABEL, self._binding.store_id)
        except CryptoError as exc:
            raise StoreError(f"event store keys unavailable ({exc})") from None
        if self._aead is not None and self._nonces is not None:
            if self._sealing_key_id == key.key_id:
                return self._aead, self._nonces, key.key_id
            self._nonces.close()  # rotated: the old key seals no more
            self._nonces = self._aead = None
        recorded = self._conn.execute(
            "SELECT counter FROM sealing_keys WHERE key_id = ?", (key.key_id,)
        ).fetchone()
        directory = self.config.directory / NONCES_DIR
        try:
            make_private_dirs(directory)
            nonces = open_counter_nonces(
                directory, key.key_id, key_used=lambda: recorded is not None
            )
        except (CryptoError, OSError) as exc:
            raise StoreOpenError(self.config.db_path, f"nonce state: {exc}") from None
        if recorded is not None and nonces.next_counter < recorded[0]:
            nonces.close()
            raise StoreOpenError(
                self.config.db_path,
                f"nonce state of key {key.key_id} is behind the database (counter "
                f"{nonces.next_counter} < {recorded[0]}: restored from an old backup?); "
                "refusing to reuse nonces",
            )
        self._nonces, self._aead, self._sealing_key_id = nonces, RawAead(key), key.key_id
        return self._aead, nonces, key.key_id

    def _opening_key(self, key_id: str) -> AeadKey | None:
        key = self._open_keys.get(key_id)
        if key is None:
            try:
                purpose = self._keys.decryption_keys(PURPOSE)
            except CryptoError as exc:
                raise StoreError(f"event store keys unavailable ({exc})") from None
            self._open_keys = {
                k.key_id: k
                for k in (gcm_key(p, GCM_LABEL, self._binding.store_id) for p in purpose.values())
            }
            key = self._open_keys.get(key_id)
        return key

    def open_payload(self, row: Sequence[Any]) -> event_pb2.Event:
        """The event of a stored row (EVENT_COLUMNS_SQL order). DecryptionError if it does not
        open under its AAD, or does not parse."""
        guardian_id, seq, event_id, key_id, nonce, ciphertext = (
            row[2],
            row[4],
            row[9],
            row[11],
            row[12],
            row[13],
        )
        key = self._opening_key(key_id) if isinstance(key_id, str) else None
        if key is None or not isinstance(nonce, bytes) or not isinstance(ciphertext, bytes):
            raise DecryptionError
        aad = codec.payload_aad(self._binding.store_id, guardian_id, seq, event_id, key_id)
        plain = RawAead(key).decrypt(nonce, ciphertext, aad)
        event = event_pb2.Event()
        try:
            event.ParseFromString(plain)
        except Exception:  # protobuf's DecodeError, and anything else a bad payload raises
            raise DecryptionError from None
        return event

    # -- writing ---------------------------------------------------------------------------

    def _writable(self) -> None:
        if self._closed:
            raise StoreReadOnlyError("the event store is closed")
        if self._signer is None or self._lock_fd is None:
            raise StoreReadOnlyError(f"{self.config.db_path} is open read-only")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have ended it
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _run_transaction(self) -> Iterator[sqlite3.Connection]:
        """A writer transaction for the run table (its own, not the chain's)."""
        with self._lock:
            self._writable()
            with self._transaction() as conn:
                yield conn

    def append_batch(
        self,
        guardian_id: str,
        events: Sequence[event_pb2.Event],
        cursor: StoredCursor | None,
        *,
        new_runs: Sequence[runs.NewRun] = (),
    ) -> int:
        """Store `events` (all of `guardian_id`), `cursor` and the playbook runs they trigger
        in one transaction; (guardian id, seq) already stored are skipped. Returns how many
        events were stored."""
        if not guardian_id:
            raise StoreArgumentError("guardian id must not be empty")
        batch: dict[int, event_pb2.Event] = {}
        for event in events:
            if event.guardian.id != guardian_id:
                raise StoreArgumentError(
                    f"an event of guardian {event.guardian.id!r} in a batch of {guardian_id!r}"
                )
            if not 0 < event.seq < _MAX_SEQ or not event.id:
                raise StoreArgumentError(f"event of {guardian_id} lacks a seq or an id")
            batch.setdefault(event.seq, event)
        with self._lock:
            self._writable()
            aead, nonces, key_id = self._sealing()
            head_rowid, head_hash = self._head_rowid, self._head_hash
            try:
                with self._transaction() as conn:
                    stored = self._insert(conn, guardian_id, batch, aead, nonces, key_id)
                    if cursor is not None:
                        self._put_cursor(conn, guardian_id, cursor)
                    if new_runs:
                        runs.insert_runs(conn, new_runs)
                    cp_count, cp_ns = self._maybe_checkpoint(conn)
            except sqlite3.IntegrityError:
                self._head_rowid, self._head_hash = head_rowid, head_hash
                raise StoreConflictError(
                    f"a batch of {guardian_id} reuses an id stored for another record "
                    "(an event or a playbook run)"
                ) from None
            except BaseException:
                self._head_rowid, self._head_hash = head_rowid, head_hash
                raise
            self._checkpoint_count, self._checkpoint_ns = cp_count, cp_ns
            return stored

    def _insert(
        self,
        conn: sqlite3.Connection,
        guardian_id: str,
        batch: Mapping[int, event_pb2.Event],
        aead: RawAead,
        nonces: CounterNonceSource,
        key_id: str,
    ) -> int:
        if not batch:
            return 0
        seqs = sorted(batch)
        have = {
            r[0]
            for r in conn.execute(
                "SELECT seq FROM events WHERE guardian_id = ? AND seq BETWEEN ? AND ?",
                (guardian_id, seqs[0], seqs[-1]),
            )
        }
        new = [batch[s] for s in seqs if s not in have]
        if not new:
            return 0
        now = max(self._clock(), self._last_stored_ns)  # never backwards: retention cuts a prefix
        rowid, prev = self._head_rowid, self._head_hash
        aad_prefix = codec.payload_aad_prefix(self._binding.store_id, guardian_id, key_id)
        rows: list[tuple[codec.RowValue, ...]] = []
        term_rows: list[tuple[int, str, bytes]] = []
        for event in new:
            rowid += 1
            clear = fields.clear_columns(event)
            nonce = nonces.next_nonce()
            aad = aad_prefix + codec.payload_aad_tail(event.seq, event.id)
            ciphertext = aead.encrypt(nonce, event.SerializeToString(deterministic=True), aad)
            row: tuple[codec.RowValue, ...] = (
                rowid,
                clear["time_ns"],
                guardian_id,
                clear["host"],
                event.seq,
                clear["category"],
                clear["severity"],
                clear["rule_id"],
                clear["kind"],
                event.id,
                now,
                key_id,
                nonce,
                ciphertext,
            )
            terms = fields.index_terms(event, self.blind)
            prev = codec.chain_hash(prev, codec.encode_row(row, terms))
            rows.append((*row, prev))
            term_rows.extend((rowid, f, t) for f, t in terms)
        conn.executemany(
            f"INSERT INTO events ({schema.EVENT_COLUMNS_SQL}, chain) "  # noqa: S608 (constants)
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO event_terms (event_rowid, field, term) VALUES (?, ?, ?)", term_rows
        )
        conn.execute(
            "INSERT INTO sealing_keys (key_id, counter) VALUES (?, ?) "
            "ON CONFLICT (key_id) DO UPDATE SET counter = max(counter, excluded.counter)",
            (key_id, nonces.next_counter),
        )
        self._set_head(conn, rowid, prev)
        self._last_stored_ns = now
        return len(new)

    def _set_head(self, conn: sqlite3.Connection, rowid: int, head: bytes) -> None:
        value = self._head_value(self._binding.binding_key, self._binding.store_id, rowid, head)
        conn.execute("UPDATE store_meta SET value = ? WHERE name = ?", (value, schema.META_HEAD))
        self._head_rowid, self._head_hash = rowid, head

    def _put_cursor(self, conn: sqlite3.Connection, guardian_id: str, cursor: StoredCursor) -> None:
        if cursor.seq >= _MAX_SEQ:
            raise StoreArgumentError("cursor seq is out of range")
        row = conn.execute(
            "SELECT spiffe_id FROM cursors WHERE guardian_id = ?", (guardian_id,)
        ).fetchone()
        if row is not None and row[0] != cursor.guardian:
            raise StoreArgumentError(
                f"the cursor of {guardian_id} belongs to {row[0]}, not {cursor.guardian}"
            )
        # The cursor never moves back: a redelivered batch cannot rewind it.
        conn.execute(
            "INSERT INTO cursors (guardian_id, spiffe_id, seq) VALUES (?, ?, ?) "
            "ON CONFLICT (guardian_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            (guardian_id, cursor.guardian, cursor.seq),
        )

    def commit_cursor(self, guardian_id: str, cursor: StoredCursor) -> None:
        """Store a cursor alone (a batch whose events were all filtered out)."""
        self.append_batch(guardian_id, (), cursor)

    def _sign(self, conn: sqlite3.Connection, kind: str, count: int, head: bytes) -> Checkpoint:
        assert self._signer is not None
        cp = self._signer.sign(self._binding.store_id, kind, count, head, self._clock())
        conn.execute(
            "INSERT INTO checkpoints (kind, count, head, time_ns, key_id, signature) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (cp.kind, cp.count, cp.head, cp.time_ns, cp.key_id, cp.signature),
        )
        return cp

    def _maybe_checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        now = self._clock()
        pending = self._head_rowid - self._checkpoint_count
        interval = int(self.config.checkpoint_interval * 1e9)
        if pending >= self.config.checkpoint_every or (
            pending > 0 and now - self._checkpoint_ns >= interval
        ):
            cp = self._sign(conn, "head", self._head_rowid, self._head_hash)
            return cp.count, cp.time_ns
        return self._checkpoint_count, self._checkpoint_ns

    def checkpoint(self) -> Checkpoint:
        """Sign the current head now (a writer), or, read-only, the latest signed checkpoint."""
        with self._lock:
            if self._signer is None or self._lock_fd is None:
                latest = self.latest_checkpoint()
                if latest is None:
                    raise StoreReadOnlyError(
                        f"{self.config.db_path} has no signed checkpoint yet and is open read-only"
                    )
                return latest
            self._writable()
            with self._transaction() as conn:
                cp = self._sign(conn, "head", self._head_rowid, self._head_hash)
            self._checkpoint_count, self._checkpoint_ns = cp.count, cp.time_ns
            return cp

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT kind, count, head, time_ns, key_id, signature FROM checkpoints "
                "ORDER BY count DESC, id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else Checkpoint(self._binding.store_id, *row)

    def signer_certificate(self, key_id: str) -> x509.Certificate | None:
        """The certificate of a key that signed checkpoints here."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT certificate FROM signers WHERE key_id = ?", (key_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            return x509.load_pem_x509_certificate(row[0])
        except ValueError:
            return None

    def retain(self, older_than: dt.timedelta) -> RetentionResult:
        """Delete the records stored more than `older_than` ago, in one transaction that signs
        a "cut" checkpoint (the last deleted record and its hash: the chain goes on from it)
        and a head checkpoint. Records are cut by storage time, which never goes backwards
        along the chain, so what is deleted is always a prefix and one anchor describes it.
        Playbook runs that ended before the cutoff go too (dead letters and runs still to
        deliver stay: they are work, not history)."""
        if older_than < dt.timedelta(0):
            raise StoreArgumentError("retention age must not be negative")
        cutoff = self._clock() - older_than // dt.timedelta(microseconds=1) * 1000
        with self._lock:
            self._writable()
            with self._transaction() as conn:
                last: tuple[int, bytes] | None = None
                for rowid, stored_ns, chain in conn.execute(
                    "SELECT rowid, stored_ns, chain FROM events ORDER BY rowid"
                ):
                    if stored_ns >= cutoff:
                        break
                    last = (rowid, chain)
                if last is None:
                    return RetentionResult(0, None)
                cut = self._sign(conn, "cut", *last)
                conn.execute("DELETE FROM event_terms WHERE event_rowid <= ?", (last[0],))
                deleted = conn.execute("DELETE FROM events WHERE rowid <= ?", (last[0],)).rowcount
                runs.delete_ended(conn, cutoff)
                head = self._sign(conn, "head", self._head_rowid, self._head_hash)
            self._checkpoint_count, self._checkpoint_ns = head.count, head.time_ns
            return RetentionResult(deleted, cut)

    # -- reading ---------------------------------------------------------------------------

    def cursor(self, guardian_id: str) -> StoredCursor | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT spiffe_id, seq FROM cursors WHERE guardian_id = ?", (guardian_id,)
            ).fetchone()
        return None if row is None else StoredCursor(row[0], row[1])

    def _event(self, row: Sequence[Any]) -> event_pb2.Event:
        try:
            return self.open_payload(row)
        except DecryptionError:
            raise StoreIntegrityError(
                f"record {row[0]} (guardian {row[2]}, seq {row[4]}) does not open: tampered or "
                "corrupted; run `qsc-cortex store verify`"
            ) from None

    def get(self, event_id: str) -> event_pb2.Event | None:
        with self._read_lock:
            row = self._reader.execute(
                f"SELECT {schema.EVENT_COLUMNS_SQL} FROM events WHERE event_id = ?",  # noqa: S608 - table and column names are module constants; values are bound
                (event_id,),
            ).fetchone()
        return None if row is None else self._event(row)

    def query(
        self,
        where: WhereClause | None = None,
        *,
        descending: bool = False,
        after: Position | None = None,
        limit: int = 100,
    ) -> Page:
        """A page of events matching `where`, by (time, rowid), after `after`."""
        if not 1 <= limit <= MAX_LIMIT:
            raise StoreArgumentError(f"limit must be 1..{MAX_LIMIT}")
        clauses = [f"({where.sql})"] if where is not None else []
        params: list[Any] = list(where.params) if where is not None else []
        if after is not None:
            keyset, keyset_params = _keyset(after, descending)
            clauses.append(keyset)
            params.extend(keyset_params)
        direction = "DESC" if descending else "ASC"
        # Constants, and the filter compiler's fragment, whose values are all `?` parameters.
        sql = f"SELECT {schema.EVENT_COLUMNS_SQL} FROM events"  # noqa: S608 - table and column names are module constants; values are bound
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY events.time_ns {direction}, events.rowid {direction} LIMIT ?"
        params.append(limit + 1)
        with self._read_lock:
            try:
                rows = self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreArgumentError(f"the query cannot run ({exc})") from None
        more = len(rows) > limit
        rows = rows[:limit]
        events = tuple(self._event(r) for r in rows)
        last = rows[-1] if rows and more else None
        return Page(events, None if last is None else Position(last[1], last[0]))

    def count(self, where: WhereClause | None = None) -> int:
        """How many stored events match `where` (all of them for None)."""
        sql = "SELECT count(*) FROM events"
        if where is not None:
            sql += f" WHERE ({where.sql})"
        with self._read_lock:
            try:
                row = self._reader.execute(sql, list(where.params) if where else []).fetchone()
            except sqlite3.Error as exc:
                raise StoreArgumentError(f"the count cannot run ({exc})") from None
        return int(row[0])

    def verify(
        self,
        *,
        checkpoint: Checkpoint | None = None,
        certificate: x509.Certificate | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Check the whole chain, every checkpoint and every payload (see `cortex.store.verify`),
        on a snapshot of its own: appends go on meanwhile. `checkpoint` (with the `certificate`
        its file carried) is an exported one, to find a truncated tail."""
        conn = self._connect(self.config.db_path, readonly=True, config=self.config)
        try:
            view = StoreView(
                store_id=self._binding.store_id,
                identity=self._binding.identity,
                open_payload=self.open_payload,
                blind=self.blind,
                head_authentic=self.head_authentic,
                read_head=self._read_head,
            )
            return verify_store(
                conn, view, checkpoint=checkpoint, certificate=certificate, progress=progress
            )
        finally:
            conn.close()

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Sign a last checkpoint when records came after the latest one, then close."""
        with self._lock:
            if self._closed:
                return
            try:
                if (
                    self._signer is not None
                    and self._lock_fd is not None
                    and self._head_rowid > self._checkpoint_count
                ):
                    with self._transaction() as conn:
                        self._sign(conn, "head", self._head_rowid, self._head_hash)
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        if self._nonces is not None:
            self._nonces.close()
            self._nonces = None
        self._conn.close()
        self._reader.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SqliteEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keyset(after: Position, descending: bool) -> tuple[str, list[int]]:
    """Rows strictly after `after` in (time_ns, rowid) order; SQLite sorts NULL first."""
    t, r = after.time_ns, after.rowid
    if not descending:
        if t is None:
            return (
                "((events.time_ns IS NULL AND events.rowid > ?) OR events.time_ns IS NOT NULL)",
                [r],
            )
        return "(events.time_ns > ? OR (events.time_ns = ? AND events.rowid > ?))", [t, t, r]
    if t is None:
        return "(events.time_ns IS NULL AND events.rowid < ?)", [r]
    return (
        "(events.time_ns < ? OR (events.time_ns = ? AND events.rowid < ?)"
        " OR events.time_ns IS NULL)",
        [t, t, r],
    )
