"""A small JSON document kept across restarts, sealed so an edit is detected, not trusted.

Format: ``QSC-HEAL-STATE 1 <label> revision=<R>\\n`` then a `crypto.aead` message sealing the
JSON under the keyring's "vault" purpose key (XChaCha20-Poly1305, random 192-bit nonces: no
counter state needed for a file rewritten a few times a day); the header line is the associated
data, so the label (which file) and the revision are authenticated. Written atomically, 0600,
in a 0700 directory. A store refuses a revision older than one it has already read or written
(an old file put back while running).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from beta.errors import BetaError, IntegrityError
from crypto.aead import Sealer, open_sealed
from crypto.errors import CryptoError, DecryptionError
from crypto.files import PRIVATE_MODE, make_private_dirs, write_file_atomic
from crypto.keyring import KeyManager

__all__ = ["HealStateError", "HealStateTamperedError", "SealedStateFile"]

PURPOSE: Final = "vault"
_HEADER_RE: Final = re.compile(rb"QSC-HEAL-STATE 1 ([a-z-]{1,32}) revision=(\d{1,19})")
_MAX_BYTES: Final = 64 << 20


class HealStateError(BetaError):
    """Heal state cannot be read or written (I/O, keys unavailable)."""


class HealStateTamperedError(IntegrityError):
    """A heal state file failed verification."""


class SealedStateFile:
    """load() -> the document or None (no file yet); save(doc)."""

    def __init__(self, path: Path, keys: KeyManager, label: str) -> None:
        if not re.fullmatch(r"[a-z-]{1,32}", label):
            raise ValueError("label must be 1-32 of a-z and '-'")
        self.path = path
        self._keys = keys
        self._label = label
        self._revision = 0
        self._lock = threading.Lock()

    def _header(self, revision: int) -> bytes:
        return b"QSC-HEAL-STATE 1 %s revision=%d\n" % (self._label.encode(), revision)

    def load(self) -> dict[str, Any] | None:
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                if self._revision:
                    raise HealStateTamperedError(f"{self.path} has disappeared") from None
                return None
            except OSError as exc:
                raise HealStateError(f"{self.path}: cannot open ({exc.strerror})") from None
            with os.fdopen(fd, "rb") as f:
                raw = f.read(_MAX_BYTES + 1)
            end = raw.find(b"\n", 0, 128)
            match = _HEADER_RE.fullmatch(raw[:end]) if end > 0 else None
            if match is None or match.group(1).decode() != self._label:
                raise HealStateTamperedError(f"{self.path}: not a {self._label} state file")
            revision = int(match.group(2))
            try:
                plain = open_sealed(
                    raw[end + 1 :], self._keys.decryption_keys(PURPOSE), raw[: end + 1]
                )
                doc = json.loads(plain)
            except DecryptionError:
                raise HealStateTamperedError(f"{self.path} failed verification") from None
            except CryptoError as exc:
                raise HealStateError(f"{self.path}: keys unavailable ({exc})") from None
            except ValueError:
                raise HealStateTamperedError(f"{self.path}: malformed document") from None
            if not isinstance(doc, dict):
                raise HealStateTamperedError(f"{self.path}: malformed document")
            if revision < self._revision:
                raise HealStateTamperedError(
                    f"{self.path}: revision {revision} is older than {self._revision} "
                    "(an old file put back)"
                )
            self._revision = revision
            return doc

    def save(self, doc: Mapping[str, Any]) -> None:
        with self._lock:
            revision = self._revision + 1
            header = self._header(revision)
            try:
                sealer = Sealer(self._keys.active_key(PURPOSE))
                blob = header + sealer.seal(json.dumps(doc, separators=(",", ":")).encode(), header)
            except CryptoError as exc:
                raise HealStateError(f"{self.path}: keys unavailable ({exc})") from None
            try:
                make_private_dirs(self.path.parent)
                write_file_atomic(self.path, blob, mode=PRIVATE_MODE, overwrite=True)
            except OSError as exc:
                raise HealStateError(f"{self.path}: cannot write ({exc.strerror})") from None
            self._revision = revision
