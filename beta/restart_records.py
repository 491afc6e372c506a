"""What Beta keeps across restarts in `[state] directory`.

* `fim-revision`: the highest baseline revision this host has seen, sealed with the keyring's
  "baseline" key (associated data: the baseline's path). The baseline store refuses an older
  revision (`min_revision`): without this record a restart would forget it, and a validly sealed
  but old baseline put back while Beta was down would be trusted. A record that does not open is
  reported, never silently reset.
* `backups/<set>.cursor`: the rotation cursor of a set (authenticated by beta.backups itself).
* `backups/<set>.last`: when the set was last verified, so a restart does not postpone (or
  repeat) a scheduled verification. Unauthenticated on purpose: an edit can delay a verification
  by at most one schedule (the due time is clamped), never suppress it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Final

from beta.errors import IntegrityError
from crypto.aead import Sealer, open_sealed
from crypto.errors import CryptoError, DecryptionError
from crypto.files import PRIVATE_MODE, make_private_dirs, write_file_atomic
from crypto.keyring import KeyManager

__all__ = ["RevisionRecord", "RevisionRecordError", "ScheduleRecord"]

_log = logging.getLogger("qsc.beta.state")
_PURPOSE: Final = "baseline"
_FORMAT: Final = b"qsc-beta-fim-revision 1\n"
_MAX_BYTES: Final = 4096


class RevisionRecordError(IntegrityError):
    """The persisted baseline revision failed verification."""


class RevisionRecord:
    """The highest baseline revision seen, sealed in the state directory. Thread-safe."""

    def __init__(self, directory: Path, baseline: Path, keys: KeyManager) -> None:
        self.path = directory / "fim-revision"
        self._aad = _FORMAT + os.fsencode(os.path.normpath(baseline))
        self._keys = keys
        self._lock = threading.Lock()
        self._saved = 0

    def load(self) -> int:
        """The recorded revision (0 if none); RevisionRecordError if it does not verify."""
        try:
            with open(self.path, "rb") as f:
                sealed = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise RevisionRecordError(f"{self.path}: cannot read ({exc.strerror})") from None
        try:
            if len(sealed) > _MAX_BYTES:
                raise DecryptionError
            plain = open_sealed(sealed, self._keys.decryption_keys(_PURPOSE), self._aad)
            revision = int(json.loads(plain)["revision"])
        except (DecryptionError, ValueError, KeyError, TypeError):
            raise RevisionRecordError(
                f"{self.path} failed verification: the recorded baseline revision cannot be "
                "trusted, so an old baseline put back would not be noticed"
            ) from None
        with self._lock:
            self._saved = max(self._saved, revision)
        return revision

    def save(self, revision: int) -> bool:
        """Record `revision` if higher than what is recorded; returns whether it wrote."""
        with self._lock:
            if revision <= self._saved:
                return False
            try:
                plain = json.dumps({"revision": revision}).encode()
                sealed = Sealer(self._keys.active_key(_PURPOSE)).seal(plain, self._aad)
                make_private_dirs(self.path.parent)
                write_file_atomic(self.path, sealed, mode=PRIVATE_MODE, overwrite=True)
            except (OSError, CryptoError) as exc:
                # The in-memory store still refuses older revisions; only a restart would not.
                _log.warning(
                    "baseline revision %d not recorded in %s: %s", revision, self.path, exc
                )
                return False
            self._saved = revision
            return True


class ScheduleRecord:
    """When a backup set was last verified (Unix seconds), one small file per set."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / "backups" / f"{name}.last"

    def load(self) -> float | None:
        try:
            doc = json.loads(self.path.read_bytes()[:_MAX_BYTES])
            return float(doc["verified"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, when: float) -> None:
        try:
            make_private_dirs(self.path.parent)
            data = json.dumps({"verified": when}).encode()
            write_file_atomic(self.path, data, mode=PRIVATE_MODE, overwrite=True)
        except OSError as exc:
            _log.warning("cannot record the last verification in %s: %s", self.path, exc)
