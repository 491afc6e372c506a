"""The key manager: a component's master key, its keyring of epochs, and rotation.

Hierarchy::

    master.key (32 random bytes, 0600)
      -> HKDF "keyring-wrap"      wraps each epoch's random root key (XChaCha20-Poly1305)
    epoch root key (32 random bytes, stored only wrapped, in keyring.json)
      -> HKDF "purpose-key"       purpose keys (event-store, vault, outbox, baseline)
      -> HKDF "purpose-key-id"    their ids, e.g. "vault/e2/1f0c9a3b"

Rotation adds an epoch; only the newest (active) epoch seals, older ones stay for decryption.
Each wrap binds its epoch's component, number, creation time and state as associated data, and
every rotation re-wraps all epochs, so swapping wraps, renumbering, back-dating or reviving an old
epoch as active all fail to open. A keyring that fails any check is refused, never re-created:
re-creating it would silently orphan everything sealed under it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import enum
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crypto.aead import AeadKey, Algorithm, Sealer, open_sealed
from crypto.errors import DecryptionError, KeyFileError, KeyringError
from crypto.files import PRIVATE_MODE, make_private_dirs, write_file_atomic
from crypto.kdf import (
    KEY_LEN,
    PURPOSES,
    build_info,
    derive_master_key_id,
    derive_purpose_key,
    derive_purpose_key_id,
    hkdf,
    validate_name,
    validate_purpose,
)
from crypto.keyfile import create_master_key, file_mode, load_master_key

MASTER_KEY_FILE: Final = "master.key"
KEYRING_FILE: Final = "keyring.json"
LOCK_FILE: Final = "keyring.lock"
FORMAT: Final = "qsc-keyring"
FORMAT_VERSION: Final = 1
DEFAULT_ROTATION_PERIOD: Final = dt.timedelta(days=90)
# Purpose keys use random 192-bit nonces: no nonce state to persist, safe across restarts.
PURPOSE_KEY_ALGORITHM: Final = Algorithm.XCHACHA20_POLY1305
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EpochState(enum.Enum):
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"


@dataclass(frozen=True)
class KeyringConfig:
    """Where a keyring lives, whose it is, and how often it rotates."""

    directory: Path
    component: str | None = None  # None: accept whichever component the keyring names
    rotation_period: dt.timedelta = DEFAULT_ROTATION_PERIOD

    def __post_init__(self) -> None:
        if self.rotation_period <= dt.timedelta(0):
            raise KeyringError("rotation period must be positive")
        if self.component is not None:
            _checked_name("component", self.component)

    @property
    def master_key_path(self) -> Path:
        return self.directory / MASTER_KEY_FILE

    @property
    def keyring_path(self) -> Path:
        return self.directory / KEYRING_FILE

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE


@dataclass(frozen=True)
class EpochStatus:
    number: int
    state: EpochState
    created: dt.datetime
    age: dt.timedelta
    key_ids: tuple[str, ...]  # one per purpose, in PURPOSES order


@dataclass(frozen=True)
class KeyringStatus:
    """Everything `qsc keys status` shows. Ids and metadata only, never key material."""

    directory: Path
    component: str
    master_key_path: Path
    master_key_id: str
    master_key_mode: int | None
    keyring_path: Path
    keyring_mode: int | None
    rotation_period: dt.timedelta
    active_epoch: int
    next_rotation_due: dt.datetime
    rotation_due: bool
    epochs: tuple[EpochStatus, ...]  # newest first
    as_of: dt.datetime  # the clock reading ages and `rotation_due` refer to

    def to_json(self) -> dict[str, Any]:
        def mode(m: int | None) -> str | None:
            return None if m is None else f"{m:04o}"

        return {
            "directory": str(self.directory),
            "component": self.component,
            "master_key": {
                "path": str(self.master_key_path),
                "id": self.master_key_id,
                "mode": mode(self.master_key_mode),
            },
            "keyring": {"path": str(self.keyring_path), "mode": mode(self.keyring_mode)},
            "rotation_period_days": self.rotation_period / dt.timedelta(days=1),
            "active_epoch": self.active_epoch,
            "next_rotation_due": _format_time(self.next_rotation_due),
            "rotation_due": self.rotation_due,
            "as_of": _format_time(self.as_of),
            "epochs": [
                {
                    "epoch": e.number,
                    "state": e.state.value,
                    "created": _format_time(e.created),
                    "age_days": round(e.age / dt.timedelta(days=1), 2),
                    "key_ids": dict(zip(PURPOSES, e.key_ids, strict=True)),
                }
                for e in self.epochs
            ],
        }


@dataclass(frozen=True, repr=False)
class _Epoch:
    number: int
    created: dt.datetime
    state: EpochState
    root: bytes = field(compare=False)

    def __repr__(self) -> str:
        return f"_Epoch({self.number}, {self.state.value}, root=<hidden>)"


@dataclass(frozen=True, repr=False)
class _Keyring:
    component: str
    master_key_id: str
    epochs: tuple[_Epoch, ...]  # oldest first; the last one is active
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size) of the file it was read from

    @property
    def active(self) -> _Epoch:
        return self.epochs[-1]


def _checked_name(kind: str, value: str) -> str:
    try:
        return validate_name(kind, value)
    except ValueError as exc:
        raise KeyringError(str(exc)) from None


def _checked_purpose(purpose: str) -> str:
    try:
        return validate_purpose(purpose)
    except ValueError as exc:
        raise KeyringError(str(exc)) from None


def _format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=dt.UTC)


def _wrap_key(master: bytes, master_key_id: str, component: str) -> AeadKey:
    secret = hkdf(master, build_info("keyring-wrap", component))
    return AeadKey(key_id=master_key_id, secret=secret, algorithm=Algorithm.XCHACHA20_POLY1305)


def _epoch_aad(component: str, number: int, created: dt.datetime, state: EpochState) -> bytes:
    return build_info("keyring-epoch", component, number, _format_time(created), state.value)


# --- the keyring file -----------------------------------------------------------------------


def _serialize(ring: _Keyring, wrap_key: AeadKey) -> bytes:
    sealer = Sealer(wrap_key)
    epochs = [
        {
            "epoch": e.number,
            "created": _format_time(e.created),
            "state": e.state.value,
            "wrapped_root": base64.b64encode(
                sealer.seal(e.root, _epoch_aad(ring.component, e.number, e.created, e.state))
            ).decode("ascii"),
        }
        for e in ring.epochs
    ]
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "component": ring.component,
        "master_key_id": ring.master_key_id,
        "epochs": epochs,
    }
    return (json.dumps(doc, indent=2) + "\n").encode("ascii")


def _write(path: Path, ring: _Keyring, wrap_key: AeadKey, *, overwrite: bool) -> None:
    try:
        write_file_atomic(path, _serialize(ring, wrap_key), mode=PRIVATE_MODE, overwrite=overwrite)
    except FileExistsError:
        raise KeyringError(f"keyring {path} already exists") from None
    except OSError as exc:
        raise KeyringError(f"keyring {path}: cannot write ({exc.strerror})") from None


def _read(config: KeyringConfig, master: bytes) -> _Keyring:
    path = config.keyring_path
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
    except FileNotFoundError:
        raise KeyringError(
            f"no keyring at {path}; create one with "
            f"`qsc keys init --dir {config.directory} --component NAME`"
        ) from None
    except OSError as exc:
        raise KeyringError(f"keyring {path}: cannot read ({exc.strerror})") from None
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def bad(reason: str) -> KeyringError:
        return KeyringError(
            f"keyring {path} {reason}. Refusing to use it, and it is not re-created "
            "automatically (data sealed under its keys would be lost): restore it from backup"
        )

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("is not valid JSON (truncated or edited)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad("is not a QSC keyring")
    if doc.get("version") != FORMAT_VERSION:
        raise bad(f"has unsupported format version {doc.get('version')!r}")
    component, master_key_id, epochs = (
        doc.get("component"),
        doc.get("master_key_id"),
        doc.get("epochs"),
    )
    if not isinstance(component, str) or not isinstance(master_key_id, str):
        raise bad("lacks its component or master key id")
    if not isinstance(epochs, list) or not epochs:
        raise bad("has no epochs")
    if config.component is not None and component != config.component:
        raise KeyringError(
            f"keyring {path} belongs to component {component!r}, not {config.component!r}"
        )
    actual_id = derive_master_key_id(master)
    if master_key_id != actual_id:
        raise KeyringError(
            f"keyring {path} was written under master key {master_key_id}, but "
            f"{config.master_key_path} is {actual_id}: wrong master key file (or an edited keyring)"
        )
    wrap_key = _wrap_key(master, master_key_id, component)
    parsed: list[_Epoch] = []
    for index, item in enumerate(epochs, start=1):
        if not isinstance(item, dict):
            raise bad(f"has a malformed epoch entry #{index}")
        number, created_s, state_s, wrapped_s = (
            item.get("epoch"),
            item.get("created"),
            item.get("state"),
            item.get("wrapped_root"),
        )
        if type(number) is not int or number != index:
            raise bad(f"has epochs out of sequence (entry #{index} says {number!r})")
        try:
            created = _parse_time(str(created_s))
            state = EpochState(state_s)
            wrapped = base64.b64decode(str(wrapped_s), validate=True)
        except (ValueError, binascii.Error):
            raise bad(f"has a malformed epoch {number}") from None
        expected = EpochState.ACTIVE if index == len(epochs) else EpochState.DECRYPT_ONLY
        if state is not expected:
            raise bad(f"marks epoch {number} {state.value}; only the newest epoch is active")
        try:
            root = open_sealed(wrapped, wrap_key, _epoch_aad(component, number, created, state))
        except DecryptionError:
            raise bad(
                f"has a wrapped root key for epoch {number} that does not open under the master "
                "key with this epoch's metadata (edited wrap, number, time or state)"
            ) from None
        if len(root) != KEY_LEN:
            raise bad(f"has a root key of the wrong length in epoch {number}")
        parsed.append(_Epoch(number, created, state, root))
    return _Keyring(component, master_key_id, tuple(parsed), stamp)


# --- the key manager ------------------------------------------------------------------------


class KeyManager:
    """Hands out purpose keys for sealing (active epoch) and opening (every epoch)."""

    def __init__(self, config: KeyringConfig, master: bytes, ring: _Keyring, clock: Clock) -> None:
        self._config = config
        self._master = master
        self._ring = ring
        self._clock = clock
        self._keys: dict[tuple[str, int], AeadKey] = {}

    def __repr__(self) -> str:
        return (
            f"KeyManager(directory={str(self._config.directory)!r}, "
            f"component={self._ring.component!r}, active_epoch={self._ring.active.number})"
        )

    @classmethod
    def open(
        cls,
        directory: Path | str,
        component: str | None = None,
        *,
        create: bool = False,
        rotation_period: dt.timedelta = DEFAULT_ROTATION_PERIOD,
        clock: Clock = utcnow,
    ) -> KeyManager:
        """Open the keyring in `directory`; with `create`, create it first if it is absent."""
        config = KeyringConfig(Path(directory), component, rotation_period)
        if create:
            created = cls._create(config, clock, exist_ok=True)
            if created is not None:
                return created
        master = _load_master(config)
        return cls(config, master, _read(config, master), clock)

    @classmethod
    def create(
        cls,
        directory: Path | str,
        component: str,
        *,
        rotation_period: dt.timedelta = DEFAULT_ROTATION_PERIOD,
        clock: Clock = utcnow,
    ) -> KeyManager:
        """Create a new master key and keyring (epoch 1); refuse if either already exists."""
        config = KeyringConfig(Path(directory), component, rotation_period)
        created = cls._create(config, clock, exist_ok=False)
        assert created is not None
        return created

    @classmethod
    def _create(cls, config: KeyringConfig, clock: Clock, *, exist_ok: bool) -> KeyManager | None:
        """Create master key and keyring; None if both exist and `exist_ok` (caller opens)."""
        if exist_ok and config.keyring_path.exists() and config.master_key_path.exists():
            return None
        if config.component is None:
            raise KeyringError("a component name is needed to create a keyring")
        try:
            make_private_dirs(config.directory)
        except OSError as exc:
            raise KeyringError(f"cannot create {config.directory}: {exc.strerror}") from None
        with _locked(config):
            if exist_ok and config.keyring_path.exists() and config.master_key_path.exists():
                return None
            if config.keyring_path.exists():
                raise KeyringError(
                    f"a keyring already exists in {config.directory}; "
                    f"see `qsc keys status --dir {config.directory}`"
                )
            if config.master_key_path.exists():
                raise KeyringError(
                    f"{config.master_key_path} exists but {config.keyring_path} does not. If the "
                    "keyring was lost, restore it from backup; if this is a leftover of an "
                    "interrupted init that never sealed anything, remove the master key and retry"
                )
            master = create_master_key(config.master_key_path)
            now = clock().replace(microsecond=0)
            master_key_id = derive_master_key_id(master)
            ring = _Keyring(
                config.component,
                master_key_id,
                (_Epoch(1, now, EpochState.ACTIVE, secrets.token_bytes(KEY_LEN)),),
                (0, 0, 0),
            )
            wrap_key = _wrap_key(master, master_key_id, config.component)
            _write(config.keyring_path, ring, wrap_key, overwrite=False)
            return cls(config, master, _read(config, master), clock)

    # -- keys --

    @property
    def component(self) -> str:
        return self._ring.component

    @property
    def config(self) -> KeyringConfig:
        return self._config

    def active_key(self, purpose: str) -> AeadKey:
        """The key to seal new data for `purpose`: always the active epoch's."""
        ring = self._current()
        return self._key(ring, _checked_purpose(purpose), ring.active)

    def decryption_keys(self, purpose: str) -> Mapping[str, AeadKey]:
        """Every epoch's key for `purpose` by key id: pass to `open_sealed` across rotations."""
        ring = self._current()
        purpose = _checked_purpose(purpose)
        keys = (self._key(ring, purpose, e) for e in ring.epochs)
        return {k.key_id: k for k in keys}

    def key_for_id(self, key_id: str) -> AeadKey:
        """The key a sealed blob names (see `crypto.aead.sealed_key_id`)."""
        ring = self._current()
        purpose, _, rest = key_id.partition("/")
        epoch_s = rest.partition("/")[0].removeprefix("e")
        if purpose in PURPOSES and epoch_s.isdigit() and 1 <= int(epoch_s) <= len(ring.epochs):
            key = self._key(ring, purpose, ring.epochs[int(epoch_s) - 1])
            if key.key_id == key_id:
                return key
        raise KeyringError(f"no key with id {key_id!r} in the keyring of {ring.component!r}")

    def _key(self, ring: _Keyring, purpose: str, epoch: _Epoch) -> AeadKey:
        cached = self._keys.get((purpose, epoch.number))
        if cached is None:
            cached = AeadKey(
                key_id=derive_purpose_key_id(epoch.root, ring.component, purpose, epoch.number),
                secret=derive_purpose_key(epoch.root, ring.component, purpose, epoch.number),
                algorithm=PURPOSE_KEY_ALGORITHM,
            )
            self._keys[(purpose, epoch.number)] = cached
        return cached

    def _current(self) -> _Keyring:
        """The keyring as on disk: another process may have rotated it since we read it."""
        try:
            st = os.stat(self._config.keyring_path)
        except FileNotFoundError:
            raise KeyringError(f"keyring {self._config.keyring_path} has disappeared") from None
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._ring.stamp:
            self._set_ring(_read(self._config, self._master))
        return self._ring

    def _set_ring(self, ring: _Keyring) -> None:
        self._ring = ring
        self._keys.clear()

    # -- rotation --

    def next_rotation_due(self) -> dt.datetime:
        return self._current().active.created + self._config.rotation_period

    def rotation_due(self) -> bool:
        return self._clock() >= self.next_rotation_due()

    def rotate(self, force: bool = False) -> bool:
        """Start a new epoch if rotation is due (or `force`); return whether it rotated."""
        with _locked(self._config):
            # Re-read under the lock: another process may have rotated a moment ago.
            ring = _read(self._config, self._master)
            self._set_ring(ring)
            now = self._clock()
            if not force and now < ring.active.created + self._config.rotation_period:
                return False
            retired = tuple(
                _Epoch(e.number, e.created, EpochState.DECRYPT_ONLY, e.root) for e in ring.epochs
            )
            new = _Epoch(
                len(retired) + 1,
                max(now.replace(microsecond=0), ring.active.created),
                EpochState.ACTIVE,
                secrets.token_bytes(KEY_LEN),
            )
            rotated = _Keyring(ring.component, ring.master_key_id, (*retired, new), ring.stamp)
            wrap_key = _wrap_key(self._master, ring.master_key_id, ring.component)
            _write(self._config.keyring_path, rotated, wrap_key, overwrite=True)
            self._set_ring(_read(self._config, self._master))
            return True

    # -- status --

    def status(self) -> KeyringStatus:
        ring = self._current()
        now = self._clock()
        due = ring.active.created + self._config.rotation_period
        epochs = tuple(
            EpochStatus(
                number=e.number,
                state=e.state,
                created=e.created,
                age=now - e.created,
                key_ids=tuple(self._key(ring, p, e).key_id for p in PURPOSES),
            )
            for e in reversed(ring.epochs)
        )
        return KeyringStatus(
            directory=self._config.directory,
            component=ring.component,
            master_key_path=self._config.master_key_path,
            master_key_id=ring.master_key_id,
            master_key_mode=file_mode(self._config.master_key_path),
            keyring_path=self._config.keyring_path,
            keyring_mode=file_mode(self._config.keyring_path),
            rotation_period=self._config.rotation_period,
            active_epoch=ring.active.number,
            next_rotation_due=due,
            rotation_due=now >= due,
            epochs=epochs,
            as_of=now,
        )


def _load_master(config: KeyringConfig) -> bytes:
    path = config.master_key_path
    if not path.exists() and not path.is_symlink():
        if not config.directory.is_dir():
            raise KeyringError(
                f"key directory {config.directory} does not exist; create a keyring with "
                f"`qsc keys init --dir {config.directory} --component NAME`"
            )
        raise KeyFileError(
            f"master key {path}: no such file; create a keyring with "
            f"`qsc keys init --dir {config.directory} --component NAME`, or restore the key "
            "from backup"
        )
    return load_master_key(path)


@contextlib.contextmanager
def _locked(config: KeyringConfig) -> Iterator[None]:
    """An exclusive flock on keyring.lock: one creator or rotator at a time, across processes."""
    try:
        fd = os.open(config.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    except OSError as exc:
        raise KeyringError(f"cannot open lock {config.lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
