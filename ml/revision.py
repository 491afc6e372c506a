"""The model directory's rollback floor: the newest model it has served or been written.

    <dir>/model-revision   sealed {"created": RFC 3339, "version": hex}: the highest revision seen

A model's revision is its authenticated card's `(created, version)`, the order `ml.store.newest`
serves by. Deleting the newest model (or putting an old, validly sealed one back) would otherwise
make the service serve an older model; the registry refuses any model whose revision is below
the floor (`ModelRollbackError`), and the floor only moves forward: `qsc-ml train`, `tune` and
`promote` (`ml.store.save_model`) and every model the service swaps in advance it.

The record is a `crypto.aead` seal (XChaCha20-Poly1305) under the ML keyring's `model` key, as
Beta's `fim-revision` is under its `baseline` key, so it cannot be edited back without the key.
It is not bound to the directory's path: the same directory may be mounted at different paths
by the trainer and the service. A record that does not open raises `RevisionRecordError`: it is
reported, never silently reset; recovering means deciding, as an operator, to remove it.
Limits (documented in the README), both about the record changed while no service runs: a
missing record restarts protection from the newest model on disk (logged as a WARNING: it is
also what a first start after upgrading sees), and an older copy of the record itself put back
is accepted (it is validly sealed; nothing outside the directory remembers a newer one). While
the service runs, its in-memory floor still refuses anything older than what it served or read,
and it rewrites a record deleted or put back older (ml.registry).

Writers take an exclusive `flock` on the directory around read-compare-write, so a trainer and
the service advancing the floor at once never move it back.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from crypto.aead import AeadKey, Sealer, open_sealed
from crypto.errors import DecryptionError
from crypto.files import (
    PRIVATE_MODE,
    FileTooLargeError,
    NotRegularFileError,
    read_regular_capped,
    write_file_atomic,
)
from ml.card import ModelCard, format_time, is_version, parse_time
from ml.errors import RevisionRecordError

RECORD_NAME: Final = "model-revision"
_AAD: Final = b"qsc-ml-model-revision 1\n"
_MAX_BYTES: Final = 4096


@dataclass(frozen=True, order=True)
class Revision:
    """A model's place in the serving order; compares as `ml.store.newest` sorts."""

    created: dt.datetime
    version: str

    @classmethod
    def of(cls, card: ModelCard) -> Revision:
        return cls(card.created, card.version)

    def describe(self) -> str:
        return f"{self.version} (created {format_time(self.created)})"


def record_path(directory: Path) -> Path:
    return directory / RECORD_NAME


def read_revision(directory: Path, keys: Mapping[str, AeadKey]) -> Revision | None:
    """The recorded floor, None when there is no record; RevisionRecordError when it does not
    verify or cannot be read."""
    path = record_path(directory)
    try:
        sealed = read_regular_capped(path, _MAX_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except (NotRegularFileError, FileTooLargeError):
        raise RevisionRecordError(path, "is not a model revision record") from None
    except OSError as exc:
        raise RevisionRecordError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(open_sealed(sealed, keys, _AAD))
        version = doc["version"]
        if not is_version(version):
            raise ValueError(version)
        return Revision(parse_time(doc["created"]), version)
    except (DecryptionError, ValueError, KeyError, TypeError):
        raise RevisionRecordError(
            path,
            "does not verify (edited, truncated, or sealed by another keyring): the newest model "
            "this directory has served cannot be known, so a rollback would go unnoticed; "
            "investigate, then remove the file to start over from the newest model on disk",
        ) from None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def advance_revision(
    directory: Path, revision: Revision, *, seal_key: AeadKey, keys: Mapping[str, AeadKey]
) -> bool:
    """Record `revision` (sealed under `seal_key`, the active `model` key) if it is above the
    recorded floor (opened with `keys`, every `model` key of the keyring); whether it wrote.
    Raises RevisionRecordError (a record that does not verify is never overwritten) or OSError."""
    with _locked(directory):
        current = read_revision(directory, keys)
        if current is not None and revision <= current:
            return False
        plain = json.dumps(
            {"created": format_time(revision.created), "version": revision.version}
        ).encode()
        sealed = Sealer(seal_key).seal(plain, _AAD)
        write_file_atomic(record_path(directory), sealed, mode=PRIVATE_MODE, overwrite=True)
        return True
