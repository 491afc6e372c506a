"""Nonce disciplines for the AEAD sealers: no nonce is ever reused under a key.

Three sources, each a :class:`NonceSource`:

* :class:`RandomNonceSource` - fresh random nonces. With XChaCha20-Poly1305 (192-bit nonces)
  collisions are negligible for any realistic message count, so this is the default there. With
  AES-256-GCM (96-bit nonces) the collision bound forces a cap of 2**32 messages per key
  (NIST SP 800-38D section 8.3); the cap is counted **per process only**, so a random-nonce
  AES-GCM key must be short-lived (one process, one epoch) - use :meth:`RandomNonceSource.aes_gcm`.
* :class:`CounterNonceSource` - deterministic AES-GCM nonces ``fixed field (4) || counter (8)``,
  persisted crash-safely in a state file bound to the key id, by reserving counter blocks: the
  reserved high-water mark is durably written *before* any counter of the block is handed out, so
  a process killed at any point restarts past every counter it might have used. The state file
  is a :mod:`crypto.statefile`, the mechanism the outbox's sequence high-water mark shares.
* :class:`SequenceNonceSource` / :class:`StreamNonce` - explicit ``stream id || sequence number``
  nonces for sealed streams whose keys are derived per session and direction (the mesh's sealed
  subscriptions): the sequence number the receiver also expects in the associated data.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import secrets
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from crypto.errors import NonceExhaustedError, NonceStateError, StateFileError
from crypto.statefile import StateValue, read_state, write_state

AES_GCM_NONCE_SIZE: Final = 12
XCHACHA_NONCE_SIZE: Final = 24
# NIST SP 800-38D 8.3: random 96-bit IVs, at most 2**32 invocations per key.
AES_GCM_RANDOM_LIMIT: Final = 2**32

_COUNTER_BYTES: Final = 8
_FIXED_FIELD_BYTES: Final = 4
_STATE_FORMAT: Final = "qsc-nonce-counter"
_STATE_VERSION: Final = 1
_MAX_STATE_BYTES: Final = 4096


@runtime_checkable
class NonceSource(Protocol):
    """Hands out nonces that are never repeated under the key they serve.

    ``key_id`` names the key a source is bound to (``None``: not bound to one key); a
    :class:`crypto.aead.Sealer` refuses a source bound to another key.
    """

    @property
    def nonce_size(self) -> int: ...

    @property
    def key_id(self) -> str | None: ...

    def next_nonce(self) -> bytes: ...


class RandomNonceSource:
    """Random nonces from ``os.urandom``, capped at ``limit`` messages (12-byte nonces: always,
    at most and by default 2**32).

    The count lives in memory: it is per process. Use a capped source only for keys that live
    and die with one process (e.g. per-epoch keys); across restarts the count starts again.
    """

    def __init__(self, nonce_size: int = XCHACHA_NONCE_SIZE, *, limit: int | None = None) -> None:
        if nonce_size not in (AES_GCM_NONCE_SIZE, XCHACHA_NONCE_SIZE):
            raise ValueError(f"nonce size must be 12 or 24 bytes, not {nonce_size}")
        if nonce_size == AES_GCM_NONCE_SIZE:
            # 96-bit random nonces are never uncapped (NIST SP 800-38D 8.3).
            limit = AES_GCM_RANDOM_LIMIT if limit is None else limit
            if limit > AES_GCM_RANDOM_LIMIT:
                raise ValueError("random 96-bit nonces allow at most 2**32 messages per key")
        if limit is not None and limit < 1:
            raise ValueError("limit must be positive")
        self._size = nonce_size
        self._limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @classmethod
    def aes_gcm(cls) -> RandomNonceSource:
        """Random 96-bit nonces for AES-GCM, refusing past 2**32 messages (per process)."""
        return cls(AES_GCM_NONCE_SIZE, limit=AES_GCM_RANDOM_LIMIT)

    @property
    def nonce_size(self) -> int:
        return self._size

    @property
    def key_id(self) -> str | None:
        return None

    @property
    def used(self) -> int:
        """Nonces handed out by this source (in this process)."""
        return self._used

    def next_nonce(self) -> bytes:
        with self._lock:
            if self._limit is not None and self._used >= self._limit:
                raise NonceExhaustedError(
                    f"random-nonce limit of {self._limit} messages reached: rotate the key"
                )
            self._used += 1
        return os.urandom(self._size)


@dataclass(frozen=True)
class CounterState:
    """What a counter state file holds (and is bound to)."""

    key_id: str
    fixed_field: bytes
    reserved_until: int  # every counter below this may have been handed out


# The file format and its checks are crypto.statefile's; the digest covers these fields, in
# this order (the order files written before that module existed used).
_STATE_FIELDS: Final = ("key_id", "fixed_field", "reserved_until")


def _write_state_durably(path: Path, state: CounterState) -> None:
    """The file holds the old or the new state, durably, whenever a crash strikes."""
    fields: dict[str, StateValue] = {
        "key_id": state.key_id,
        "fixed_field": state.fixed_field.hex(),
        "reserved_until": state.reserved_until,
    }
    write_state(path, _STATE_FORMAT, _STATE_VERSION, fields)


def read_counter_state(path: str | os.PathLike[str]) -> CounterState:
    """Read and verify a counter state file (for inspection; raises NonceStateError)."""
    p = Path(path)
    bad = NonceStateError(f"nonce state file {p} is corrupt; refusing to reuse nonces")
    try:
        doc = read_state(
            p, _STATE_FORMAT, _STATE_VERSION, _STATE_FIELDS, max_bytes=_MAX_STATE_BYTES
        )
    except StateFileError as e:
        if e.problem == "missing":
            raise NonceStateError(f"nonce state file {p} does not exist") from None
        if e.problem == "version":
            raise NonceStateError(f"nonce state file {p} has unsupported version") from None
        if e.problem == "unreadable":
            raise NonceStateError(f"cannot read nonce state file {p}: {e}") from None
        raise bad from None
    key_id, fixed_hex, until = (doc[name] for name in _STATE_FIELDS)
    if not (
        isinstance(key_id, str)
        and isinstance(fixed_hex, str)
        and type(until) is int
        and 0 <= until <= 2**64
    ):
        raise bad
    try:
        fixed = bytes.fromhex(fixed_hex)
    except ValueError:
        raise bad from None
    if len(fixed) != _FIXED_FIELD_BYTES:
        raise bad
    return CounterState(key_id, fixed, until)


class CounterNonceSource:
    """Deterministic AES-GCM nonces ``fixed_field (4 bytes) || counter (8 bytes, big-endian)``.

    Crash safety: counters are reserved ``block_size`` at a time; the new high-water mark is
    written durably before the first counter of a block is returned. After a crash (kill -9,
    power loss) the next process starts at the recorded high-water mark, skipping whatever of
    the last block was not used - counters are plentiful, reuse is fatal.

    The state file is bound to ``key_id`` and ``fixed_field``; a missing file is an error for
    :meth:`open` (it may mean the state was lost: starting again at zero would reuse nonces),
    and :meth:`create` refuses to overwrite an existing one. A lock file (``<state>.lock``,
    ``flock``) keeps two processes from drawing on the same state; after ``fork`` the child must
    use a source of its own (the inherited one refuses), with its own state file and fixed
    field. Several writers sharing one key need distinct ``fixed_field`` values and state files.
    """

    DEFAULT_BLOCK: Final = 4096

    def __init__(
        self,
        path: Path,
        state: CounterState,
        lock_fd: int,
        *,
        block_size: int,
        limit: int,
    ) -> None:
        # Use create() or open(): they validate and lock before this runs.
        self._path = path
        self._key_id = state.key_id
        self._fixed = state.fixed_field
        self._next = state.reserved_until
        self._reserved_until = state.reserved_until
        self._block = block_size
        self._limit = limit
        self._lock_fd: int | None = lock_fd
        self._lock = threading.Lock()
        self._forked = False
        _live_counter_sources.add(self)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        key_id: str,
        *,
        fixed_field: bytes = bytes(_FIXED_FIELD_BYTES),
        block_size: int = DEFAULT_BLOCK,
        limit: int = 2**64,
    ) -> CounterNonceSource:
        """Start counting from zero for a new key; refuses if the state file already exists."""
        p = Path(path)
        cls._check_args(key_id, fixed_field, block_size, limit)
        lock_fd = cls._acquire_lock(p)
        try:
            if p.exists():
                raise NonceStateError(f"nonce state file {p} already exists; use open()")
            state = CounterState(key_id, fixed_field, 0)
            _write_state_durably(p, state)
            return cls(p, state, lock_fd, block_size=block_size, limit=limit)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        key_id: str,
        *,
        fixed_field: bytes | None = None,
        block_size: int = DEFAULT_BLOCK,
        limit: int = 2**64,
    ) -> CounterNonceSource:
        """Resume after every counter a previous process might have used."""
        p = Path(path)
        cls._check_args(key_id, fixed_field, block_size, limit)
        lock_fd = cls._acquire_lock(p)
        try:
            state = read_counter_state(p)
            if not hmac.compare_digest(state.key_id.encode(), key_id.encode()):
                raise NonceStateError(f"nonce state file {p} belongs to another key")
            if fixed_field is not None and state.fixed_field != fixed_field:
                raise NonceStateError(f"nonce state file {p} has another fixed field")
            return cls(p, state, lock_fd, block_size=block_size, limit=limit)
        except BaseException:
            os.close(lock_fd)
            raise

    @staticmethod
    def _check_args(key_id: str, fixed: bytes | None, block_size: int, limit: int) -> None:
        if not key_id:
            raise ValueError("key_id must not be empty")
        if fixed is not None and len(fixed) != _FIXED_FIELD_BYTES:
            raise ValueError(f"fixed_field must be {_FIXED_FIELD_BYTES} bytes")
        if block_size < 1:
            raise ValueError("block_size must be positive")
        if not 1 <= limit <= 2**64:
            raise ValueError("limit must be in 1..2**64")

    @staticmethod
    def _acquire_lock(path: Path) -> int:
        lock_path = path.with_name(path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise NonceStateError(f"cannot open lock file {lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NonceStateError(f"nonce state file {path} is in use by another process") from None
        return fd

    @property
    def nonce_size(self) -> int:
        return AES_GCM_NONCE_SIZE

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def path(self) -> Path:
        return self._path

    @property
    def next_counter(self) -> int:
        """The counter the next nonce will carry."""
        return self._next

    def next_nonce(self) -> bytes:
        with self._lock:
            counter = self._next
            # Fast path: inside a reserved block. Closing, fork and the limit all force the
            # slow path by keeping/setting the reserved mark at or below the counter.
            if counter >= self._reserved_until:
                self._reserve(counter)
            self._next = counter + 1
        return self._fixed + counter.to_bytes(_COUNTER_BYTES, "big")

    def _reserve(self, counter: int) -> None:
        if self._lock_fd is None:
            raise NonceStateError("nonce source is closed")
        if self._forked:
            # A forked child shares our in-memory counter: both would emit the same nonces.
            raise NonceStateError("nonce source used after fork; open a new one")
        if counter >= self._limit:
            raise NonceExhaustedError("nonce counter exhausted: rotate the key")
        until = min(counter + self._block, self._limit)
        _write_state_durably(self._path, CounterState(self._key_id, self._fixed, until))
        self._reserved_until = until

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._reserved_until = 0
        self._lock = threading.Lock()  # the parent's may have been held at fork time

    def close(self) -> None:
        """Release the lock file. Unused reserved counters are skipped by the next open()."""
        with self._lock:
            self._reserved_until = 0
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> CounterNonceSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_live_counter_sources: weakref.WeakSet[CounterNonceSource] = weakref.WeakSet()


def _mark_counter_sources_forked() -> None:
    for source in list(_live_counter_sources):
        source._after_fork_in_child()


os.register_at_fork(after_in_child=_mark_counter_sources_forked)


@dataclass(frozen=True)
class StreamNonce:
    """Explicit nonces for one direction of a sealed stream.

    Layout: ``stream_id`` (4 bytes, big-endian) ``|| zero padding || sequence`` (8 bytes,
    big-endian), ``size`` bytes in all (12 for AES-GCM, 24 for XChaCha20-Poly1305). The stream id
    names the direction/stream (e.g. 1 = guardian->subscriber, 2 = subscriber->guardian) so the
    two directions never share a nonce even if they were ever to share a key; the sequence number
    is the batch sequence number, which the sender also puts into the associated data so the
    receiver rejects reordered or replayed batches. Unique only while each (key, stream id, seq)
    is sealed once: use it with keys derived per session, never with a long-lived key.
    """

    stream_id: int
    size: int = AES_GCM_NONCE_SIZE

    def __post_init__(self) -> None:
        if not 0 <= self.stream_id < 2**32:
            raise ValueError("stream_id must fit in 32 bits")
        if self.size not in (AES_GCM_NONCE_SIZE, XCHACHA_NONCE_SIZE):
            raise ValueError("size must be 12 or 24")

    def for_sequence(self, seq: int) -> bytes:
        if not 0 <= seq < 2**64:
            raise ValueError("sequence number must fit in 64 bits")
        pad = bytes(self.size - 4 - _COUNTER_BYTES)
        return self.stream_id.to_bytes(4, "big") + pad + seq.to_bytes(_COUNTER_BYTES, "big")

    def sequence_of(self, nonce: bytes) -> int:
        """Inverse of :meth:`for_sequence`; ValueError if the nonce is not of this stream."""
        if (
            len(nonce) != self.size
            or nonce[: self.size - _COUNTER_BYTES]
            != self.for_sequence(0)[: self.size - _COUNTER_BYTES]
        ):
            raise ValueError("nonce does not belong to this stream")
        return int.from_bytes(nonce[-_COUNTER_BYTES:], "big")


class SequenceNonceSource:
    """A :class:`NonceSource` over :class:`StreamNonce`: sequence numbers ``start, start+1, ...``.

    In memory only, strictly increasing; raises NonceExhaustedError after 2**64 - 1. The writer
    of a stream reads :attr:`next_sequence` to put the same number into the associated data.
    """

    def __init__(self, stream: StreamNonce, start: int = 0) -> None:
        if not 0 <= start < 2**64:
            raise ValueError("start must fit in 64 bits")
        self._stream = stream
        self._next = start
        self._lock = threading.Lock()

    @property
    def nonce_size(self) -> int:
        return self._stream.size

    @property
    def key_id(self) -> str | None:
        return None

    @property
    def next_sequence(self) -> int:
        return self._next

    def next_nonce(self) -> bytes:
        with self._lock:
            if self._next >= 2**64:
                raise NonceExhaustedError("stream sequence numbers exhausted")
            nonce = self._stream.for_sequence(self._next)
            self._next += 1
            return nonce


def random_fixed_field() -> bytes:
    """A random 4-byte fixed field, e.g. one per writer sharing a key."""
    return secrets.token_bytes(_FIXED_FIELD_BYTES)
