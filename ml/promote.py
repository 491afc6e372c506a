"""A deliberate rollback: make an older model version the newest again (`qsc-ml promote`).

The registry refuses a model older than the directory's floor (ml.revision), so deleting the
newest model is not a way back. Promoting re-seals the chosen version's card with a new `created`
time (its ONNX file, hence its version, is unchanged) and a `promoted` entry naming the version
it replaces and the operator's reason; that moves the floor forward to it like any new model.
The service then serves it at its next poll (or on SIGHUP), logging "model serving after a
deliberate rollback" at WARNING, and GetModel reports `promoted_from_version`: possible, and
never quiet.

The version must authenticate (card and model) with the keyring, and must not already be the
newest: promoting is for going back. Its new `created` is now, or just after the floor when this
machine's clock is behind the one that wrote the newest model, so the promoted version is always
the newest.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ml.card import format_time
from ml.errors import PromotionError
from ml.revision import Revision, read_revision
from ml.store import PURPOSE, KeySource, StoredModel, load_model, newest, save_model

_TICK = dt.timedelta(microseconds=1)  # the resolution of a card's `created`


def promote_model(
    directory: Path,
    version: str,
    keys: KeySource,
    *,
    reason: str,
    now: dt.datetime | None = None,
) -> StoredModel:
    """Authenticate `version` (card and model) and write it back as the newest version.

    Raises PromotionError (no reason, or `version` is already the newest), ModelNotFoundError,
    ModelIntegrityError (it does not authenticate) or RevisionRecordError (the floor does not
    verify: nothing is written)."""
    reason = reason.strip()
    if not reason:
        raise PromotionError("--reason: say why (it is kept in the card and logged)")
    stored = load_model(directory, version, keys)
    floor = read_revision(directory, keys.decryption_keys(PURPOSE))
    # The version it replaces: the floor (the newest this directory has had, maybe deleted
    # since), or without a record the newest card on disk.
    if floor is not None:
        previous, newest_already = floor.version, Revision.of(stored.card) >= floor
    else:
        previous = newest(directory).version
        newest_already = previous == version
    if newest_already:
        raise PromotionError(
            f"{version} is already the newest model of {directory}: nothing to roll back to"
        )
    stamp = now or dt.datetime.now(dt.UTC)
    if floor is not None and stamp <= floor.created:
        stamp = floor.created + _TICK
    created = format_time(stamp)
    doc = {k: v for k, v in stored.card.doc.items() if k not in ("auth", "version")}
    doc["created"] = created
    doc["promoted"] = {"time": created, "previous_version": previous, "reason": reason}
    return save_model(directory, stored.model_bytes, doc, keys)
