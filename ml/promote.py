"""A deliberate rollback: make an older model version the newest again (`qsc-ml promote`).

The registry refuses a model older than the directory's floor (ml.revision), so deleting the
newest model is not a way back. Promoting re-seals the chosen version's card with a new `created`
time (its ONNX file, hence its version, is unchanged) and a `promoted` entry naming the version
it replaces and the operator's reason; that moves the floor forward to it like any new model.
The service then serves it at its next poll, logging "model serving after a deliberate rollback"
at WARNING, and GetModel reports `promoted_from_version`: possible, and never quiet.
"""

from __future__ import annotations

import datetime as dt

from ml.card import format_time
from ml.errors import ModelNotFoundError
from ml.revision import read_revision
from ml.store import PURPOSE, KeySource, StoredModel, load_model, newest, save_model


def promote_model(
    directory: str | object,
    version: str,
    keys: KeySource,
    *,
    reason: str,
    now: dt.datetime | None = None,
) -> StoredModel:
    """Authenticate `version` (card and model) and write it back as the newest version."""
    from pathlib import Path

    path = Path(str(directory))
    stored = load_model(path, version, keys)
    floor = read_revision(path, keys.decryption_keys(PURPOSE))  # RevisionRecordError: stop
    if floor is not None:
        previous: str | None = floor.version
    else:
        try:
            previous = newest(path).version
        except ModelNotFoundError:
            previous = None
    stamp = format_time(now or dt.datetime.now(dt.UTC))
    doc = {k: v for k, v in stored.card.doc.items() if k not in ("auth", "version")}
    doc["created"] = stamp
    doc["promoted"] = {"time": stamp, "previous_version": previous, "reason": reason}
    return save_model(path, stored.model_bytes, doc, keys)
