"""The byte strings the store hashes, authenticates and signs: one place, so writer and
verifier cannot drift apart.

* **Row encoding** (`encode_row`): every stored column of a record in `ROW_COLUMNS` order, then
  its `event_terms` rows sorted by (field, term). Each value is a type tag and, for text and
  blobs, a 4-byte length: NULL `00`, integer `01` + 8 bytes signed big-endian, text `02`, blob
  `03`. Injective, so no two different rows encode alike.
* **Chain** (`chain_hash`): ``BLAKE3(CHAIN_LABEL || previous hash || row encoding)``; the first
  record's previous hash is `genesis(store_id)`. Unkeyed on purpose: anyone holding a copy of
  the database and an exported checkpoint can check it, no secret needed.
* **AAD** of a payload (`payload_aad`): store id, guardian id, key id, seq and event id: a
  ciphertext moved to another row, or to another store, does not open.
* **Blind index** (`blind_term`): ``HMAC-SHA256(blind key, field || 0x00 || value)``.
* **Checkpoint body** (`checkpoint_body`): what the Cortex's key signs.
* **Head and binding MACs**: the store head (last rowid and hash) and the store's identity rows
  carry an HMAC under a key derived from the store key, so a truncated tail or an edited binding
  is caught at open even without an exported checkpoint, unless the editor holds the key.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from crypto.hashing import blake3_256
from crypto.kdf import encode_fields

FORMAT: Final = "qsc-cortex-event-store"
FORMAT_VERSION: Final = 1
CHAIN_LABEL: Final = b"qsc-cortex-store-chain-v1\x00"
# The stored columns of `events` a record's hash covers, in this order (`chain` is the hash).
ROW_COLUMNS: Final = (
    "rowid",
    "time_ns",
    "guardian_id",
    "host",
    "seq",
    "category",
    "severity",
    "rule_id",
    "kind",
    "event_id",
    "stored_ns",
    "key_id",
    "nonce",
    "ciphertext",
)
RowValue = int | str | bytes | None


_NULL: Final = b"\x00"
_TAGGED_INT: Final = struct.Struct(">Bq").pack
_TAGGED_LENGTH: Final = struct.Struct(">BI").pack


def encode_row(row: Sequence[RowValue], terms: Iterable[tuple[str, bytes]]) -> bytes:
    """The canonical encoding of one record: `row` in ROW_COLUMNS order, then its terms."""
    if len(row) != len(ROW_COLUMNS):
        raise ValueError("row has the wrong number of columns")
    # Inlined (no helper per value): this runs about 20 times per stored event.
    parts: list[bytes] = []
    add = parts.append
    for value in row:
        kind = type(value)
        if kind is str:
            raw = value.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
            add(_TAGGED_LENGTH(2, len(raw)))
            add(raw)
        elif kind is int:
            add(_TAGGED_INT(1, value))
        elif kind is bytes:
            add(_TAGGED_LENGTH(3, len(value)))  # type: ignore[arg-type]
            add(value)  # type: ignore[arg-type]
        elif value is None:
            add(_NULL)
        else:  # a bool is an int and an int subclass is not an int here: refuse, not guess
            raise TypeError(f"unsupported row value {kind.__name__}")
    ordered = sorted(terms)
    add(len(ordered).to_bytes(4, "big"))
    for field, term in ordered:
        raw = field.encode("utf-8", "surrogatepass")
        add(_TAGGED_LENGTH(2, len(raw)))
        add(raw)
        add(_TAGGED_LENGTH(3, len(term)))
        add(term)
    return b"".join(parts)


def genesis(store_id: str) -> bytes:
    """The "previous hash" of record 1."""
    return blake3_256(b"qsc-cortex-store-genesis-v1\x00" + store_id.encode("ascii"))


def chain_hash(previous: bytes, encoded_row: bytes) -> bytes:
    return blake3_256(CHAIN_LABEL + previous + encoded_row)


def payload_aad(store_id: str, guardian_id: str, seq: int, event_id: str, key_id: str) -> bytes:
    return payload_aad_prefix(store_id, guardian_id, key_id) + payload_aad_tail(seq, event_id)


def payload_aad_prefix(store_id: str, guardian_id: str, key_id: str) -> bytes:
    """The part of the AAD a whole batch shares (fields encode one after the other, so
    prefix + tail is exactly `payload_aad`)."""
    return encode_fields("qsc-cortex-event", FORMAT_VERSION, store_id, guardian_id, key_id)


def payload_aad_tail(seq: int, event_id: str) -> bytes:
    return encode_fields(seq, event_id)


def blind_term(key: bytes, field: str, value: str) -> bytes:
    return hmac.digest(key, field.encode("utf-8") + b"\x00" + value.encode("utf-8"), "sha256")


def checkpoint_body(
    store_id: str, kind: str, count: int, head: bytes, time_ns: int, key_id: str
) -> bytes:
    return encode_fields(
        "qsc-cortex-store-checkpoint", FORMAT_VERSION, store_id, kind, count, head, time_ns, key_id
    )


def head_mac(key: bytes, store_id: str, rowid: int, head: bytes) -> bytes:
    return hmac.digest(key, encode_fields("qsc-cortex-store-head", store_id, rowid, head), "sha256")


def binding_mac(key: bytes, fields: Sequence[str | int]) -> bytes:
    return hmac.digest(key, encode_fields("qsc-cortex-store-binding", *fields), "sha256")


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality for hashes and MACs."""
    return hmac.compare_digest(a, b)


__all__ = [
    "CHAIN_LABEL",
    "FORMAT",
    "FORMAT_VERSION",
    "ROW_COLUMNS",
    "RowValue",
    "binding_mac",
    "blind_term",
    "chain_hash",
    "checkpoint_body",
    "encode_row",
    "genesis",
    "head_mac",
    "payload_aad",
    "payload_aad_prefix",
    "payload_aad_tail",
    "same",
]
