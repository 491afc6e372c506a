"""The model directory: content-addressed ONNX files and their authenticated cards.

    <dir>/<version>.onnx        the model; version = BLAKE3 (hex) of these bytes
    <dir>/<version>.card.json   its card (ml.card), carrying the model's BLAKE3 and an `auth` seal
    <dir>/model-revision        the rollback floor: the newest model written or served (ml.revision)

Files are 0600 in a 0700 directory (`MODEL_MODE`, `DIRECTORY_MODE`): a model tells an attacker
what scores normal. Every write makes them so whatever the umask (modes are set from birth by
`crypto.files.write_file_atomic`, temporary files included; the revision lock is a `flock` on the
directory itself, no lock file), and tightens a directory or model file left wider by an older
version.

Rollback: `save_model` refuses to write a model older than the directory's floor
(ml.revision), which the service would refuse; every model it writes moves the floor up.

Authentication: `auth.seal` is a `crypto.aead` seal (XChaCha20-Poly1305, random 192-bit nonce) of
an empty message under the ML keyring's active `model` purpose key, with associated data
``encode_fields(FORMAT, FORMAT_VERSION, BLAKE3(canonical card))``, where the canonical card is
the document without `auth` as sorted, compact, ASCII JSON. The card names the model's BLAKE3, so
the one seal covers both files: an edited card fails the seal, an edited or swapped model fails
the hash. The seal names its key id, so cards sealed before a key rotation still verify.

Loading authenticates before interpreting anything, then checks the model bytes; every failure
is a `ModelIntegrityError` naming the file. The serving model is the card with the latest
`created` time (a tuned model supersedes its parent); writing the card last, atomically, means a
card is only ever seen beside a complete model file.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from crypto.aead import AeadKey, Sealer, open_sealed, sealed_key_id
from crypto.errors import DecryptionError
from crypto.files import (
    FileTooLargeError,
    NotRegularFileError,
    make_private_dirs,
    read_regular_capped,
    write_file_atomic,
)
from crypto.hashing import blake3_256, sha3_256
from crypto.kdf import encode_fields
from ml.card import FORMAT, FORMAT_VERSION, ModelCard, format_time, is_version, parse_time
from ml.errors import ModelIntegrityError, ModelNotFoundError, ModelRollbackError
from ml.revision import Revision, advance_revision, read_revision

PURPOSE: Final = "model"  # the keyring purpose (crypto.kdf.PURPOSES)
MODEL_SUFFIX: Final = ".onnx"
CARD_SUFFIX: Final = ".card.json"
MAX_CARD_BYTES: Final = 1024 * 1024
MAX_MODEL_BYTES: Final = 512 * 1024 * 1024
# The model and its card reveal what the detector has learnt (training ranges, thresholds, the
# trees): an attacker reading them can craft rows that score normal. 0600 in a 0700 directory,
# as every other file the mesh writes; whoever runs `qsc-ml serve` must own them.
MODEL_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700


class KeySource(Protocol):
    """What the store needs from a key manager (`crypto.keyring.KeyManager` is one)."""

    def active_key(self, purpose: str) -> AeadKey: ...

    def decryption_keys(self, purpose: str) -> Mapping[str, AeadKey]: ...


@dataclass(frozen=True)
class StoredModel:
    """An authenticated model: its card and its ONNX bytes."""

    card: ModelCard
    model_bytes: bytes
    card_path: Path
    model_path: Path


@dataclass(frozen=True)
class Candidate:
    """A card found in the directory, not yet authenticated (`created` is its unverified claim)."""

    version: str
    created: dt.datetime
    card_path: Path
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size): has the card changed since


def model_path(directory: Path, version: str) -> Path:
    return directory / f"{version}{MODEL_SUFFIX}"


def card_path(directory: Path, version: str) -> Path:
    return directory / f"{version}{CARD_SUFFIX}"


def canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "auth"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _aad(doc: Mapping[str, Any]) -> bytes:
    return encode_fields(FORMAT, FORMAT_VERSION, blake3_256(canonical(doc)))


def seal_card(doc: Mapping[str, Any], key: AeadKey) -> dict[str, Any]:
    """The document with its `auth` seal."""
    tag = Sealer(key).seal(b"", _aad(doc))
    return {**{k: v for k, v in doc.items() if k != "auth"}, "auth": {"seal": _b64(tag)}}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_PAIR: Final = re.compile(r"\[\s+(-?[0-9][0-9.eE+-]*),\s+(-?[0-9][0-9.eE+-]*)\s+\]")


def encode_card(doc: Mapping[str, Any]) -> bytes:
    """Indented JSON for people, with each [quantile, score] knot kept on one line."""
    text = json.dumps(doc, sort_keys=True, indent=2, allow_nan=False)
    return (_PAIR.sub(r"[\1, \2]", text) + "\n").encode()


def save_model(
    directory: Path, model_bytes: bytes, doc: Mapping[str, Any], keys: KeySource
) -> StoredModel:
    """Fill in the card's version and model hashes, seal it and write both files (model first).

    Writing a version that exists keeps the model file (same bytes by construction) and replaces
    the card, which refreshes its creation time and makes it the serving one again. Advances the
    directory's rollback floor (ml.revision) to the written model. Nothing is written when the
    record does not verify (RevisionRecordError) or the model would be older than the floor
    (ModelRollbackError: the service would refuse it)."""
    private_directory(directory)
    digest = blake3_256(model_bytes)
    version = digest.hex()
    model = {
        **dict(doc.get("model", {})),
        "file": model_path(Path("."), version).name,
        "bytes": len(model_bytes),
        "blake3": version,
        "sha3_256": sha3_256(model_bytes).hex(),
    }
    full = {**doc, "format": FORMAT, "format_version": FORMAT_VERSION}
    full.update(version=version, model=model)
    full.setdefault("created", format_time(dt.datetime.now(dt.UTC)))
    seal_key = keys.active_key(PURPOSE)
    decrypt = keys.decryption_keys(PURPOSE)
    sealed = seal_card(full, seal_key)
    card = ModelCard.from_json(sealed)  # the document must parse before it is published
    mpath, cpath = model_path(directory, version), card_path(directory, version)
    # RevisionRecordError now, before any file is written; and a model the service would refuse
    # as a rollback is refused here instead of written.
    floor = read_revision(directory, decrypt)
    revision = Revision.of(card)
    if floor is not None and revision < floor:
        raise ModelRollbackError(
            cpath,
            f"would be {revision.describe()}, older than {floor.describe()}, the newest model "
            "this directory has had: the service would refuse it as a rollback. Is this "
            "machine's clock behind the one that wrote the newest model? (`qsc-ml promote` "
            "makes an existing older version the newest on purpose.)",
        )
    try:
        write_file_atomic(mpath, model_bytes, mode=MODEL_MODE)
    except FileExistsError:
        if blake3_256(_read_capped(mpath, MAX_MODEL_BYTES, follow_symlinks=False)) != digest:
            # Not ours to overwrite silently: whatever is there does not match its name.
            raise ModelIntegrityError(
                mpath, "exists with other content than its name says"
            ) from None
        os.chmod(mpath, MODEL_MODE)  # a file from before models were private: tighten it
    write_file_atomic(cpath, encode_card(sealed), mode=MODEL_MODE, overwrite=True)
    # The written model is the newest this directory has had: the rollback floor moves up to it
    # (ml.revision). Checked before anything was written, so a bad record fails the command
    # instead of leaving a model the service would refuse.
    advance_revision(directory, revision, seal_key=seal_key, keys=decrypt)
    return StoredModel(card, model_bytes, cpath, mpath)


def private_directory(directory: Path) -> None:
    """Create `directory` and missing parents 0700 (`crypto.files.make_private_dirs`), or make
    an existing one 0700 when it is open to group or others (as older versions left it)."""
    make_private_dirs(directory)
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & 0o077 or mode & DIRECTORY_MODE != DIRECTORY_MODE:  # open, or a umask took rwx
        os.chmod(directory, (mode & ~0o077) | DIRECTORY_MODE)


def _read_capped(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    try:
        return read_regular_capped(path, limit, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise ModelIntegrityError(path, "is missing") from None
    except NotRegularFileError:
        raise ModelIntegrityError(path, "is not a regular file") from None
    except FileTooLargeError:
        raise ModelIntegrityError(path, f"is larger than {limit} bytes") from None
    except OSError as exc:
        raise ModelIntegrityError(path, f"cannot be opened ({exc.strerror})") from None


def _authenticate(path: Path, doc: Mapping[str, Any], keys: Mapping[str, AeadKey]) -> None:
    try:
        tag = base64.b64decode(doc["auth"]["seal"], validate=True)
        key_id = sealed_key_id(tag)
    except (KeyError, TypeError, ValueError, binascii.Error, DecryptionError):
        raise ModelIntegrityError(path, "has no valid auth seal: not a sealed model card") from None
    if key_id not in keys:
        raise ModelIntegrityError(
            path,
            f"is sealed by key {key_id!r}, which this keyring does not have (a model from "
            "another deployment, or the card was edited)",
        )
    try:
        open_sealed(tag, keys, _aad(doc))
    except (DecryptionError, ValueError):
        raise ModelIntegrityError(
            path, "does not authenticate: the card was edited after it was sealed"
        ) from None


def load_card(path: Path, keys: KeySource | Mapping[str, AeadKey]) -> ModelCard:
    """Read and authenticate a card (not its model)."""
    key_map = keys if isinstance(keys, Mapping) else keys.decryption_keys(PURPOSE)
    raw = _read_capped(path, MAX_CARD_BYTES)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ModelIntegrityError(path, "is not JSON (truncated or edited)") from None
    if not isinstance(doc, dict):
        raise ModelIntegrityError(path, "is not a model card")
    _authenticate(path, doc, key_map)
    try:
        card = ModelCard.from_json(doc)
    except (KeyError, TypeError, ValueError) as exc:
        # Authentic but unreadable: written by an incompatible version of qsc-ml.
        raise ModelIntegrityError(path, f"is not a card this version reads ({exc})") from None
    if path.name != card_path(Path("."), card.version).name:
        raise ModelIntegrityError(path, f"is the card of version {card.version}, not its name's")
    return card


def load_model(
    directory: Path, version: str, keys: KeySource | Mapping[str, AeadKey]
) -> StoredModel:
    """Authenticate the card of `version`, then check the model file against it."""
    if not is_version(version):
        raise ModelNotFoundError(f"{version!r} is not a model version (64 hex digits)")
    cpath, mpath = card_path(directory, version), model_path(directory, version)
    if not cpath.exists():
        raise ModelNotFoundError(f"no model {version} in {directory}")
    card = load_card(cpath, keys)
    data = _read_capped(mpath, MAX_MODEL_BYTES)
    if blake3_256(data) != card.model_blake3:
        raise ModelIntegrityError(
            mpath, "does not match the BLAKE3 its authenticated card names: tampered or replaced"
        )
    return StoredModel(card, data, cpath, mpath)


# Card path -> (stamp, created): a poller re-reads only the cards that changed.
CreatedCache = dict[Path, tuple[tuple[int, int, int], dt.datetime]]


def _created(path: Path) -> dt.datetime:
    try:
        return parse_time(json.loads(_read_capped(path, MAX_CARD_BYTES))["created"])
    except (ModelIntegrityError, ValueError, KeyError, TypeError):
        return dt.datetime.min.replace(tzinfo=dt.UTC)  # still a candidate: loading says why


def candidates(directory: Path, cache: CreatedCache | None = None) -> list[Candidate]:
    """Cards in `directory`, newest first by their (unverified) creation time, then version."""
    found: list[Candidate] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        raise ModelNotFoundError(f"model directory {directory} does not exist") from None
    for entry in entries:
        name = entry.name
        if not name.endswith(CARD_SUFFIX) or not is_version(name[: -len(CARD_SUFFIX)]):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        if not stat.S_ISREG(st.st_mode):
            continue
        path = Path(entry.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        known = cache.get(path) if cache is not None else None
        if known is not None and known[0] == stamp:
            created = known[1]
        else:
            created = _created(path)
            if cache is not None:
                cache[path] = (stamp, created)
        found.append(Candidate(name[: -len(CARD_SUFFIX)], created, path, stamp))
    if cache is not None:  # forget cards that are gone
        for path in set(cache) - {c.card_path for c in found}:
            del cache[path]
    found.sort(key=lambda c: (c.created, c.version), reverse=True)
    return found


def newest(directory: Path, cache: CreatedCache | None = None) -> Candidate:
    """The card that should be serving; ModelNotFoundError when the directory has none."""
    found = candidates(directory, cache)
    if not found:
        raise ModelNotFoundError(f"no model in {directory} (train one with `qsc-ml train`)")
    return found[0]
