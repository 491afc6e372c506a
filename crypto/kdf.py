"""HKDF-SHA256 key derivation with unambiguous, versioned `info`, and derived key ids.

Every `info` (and every associated-data string the keyring builds) goes through `encode_fields`:
each field is a type tag, a 2-byte length and the bytes, so ("ab", "c") and ("a", "bc") can never
encode alike. Every derivation starts with the app name, the format version and a label saying
what is being derived, so a key and its id (or keys for different jobs) never share an `info`.
"""

from __future__ import annotations

import re
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

APP: Final = "qsc"
VERSION: Final = "v1"
KEY_LEN: Final = 32
# Purposes a key manager hands out keys for. A closed set: a typo must fail loudly rather than
# derive a different key whose data nobody can open later.
PURPOSES: Final = (
    "event-store",
    "vault",
    "outbox",
    "baseline",
    "manifest",
    "model",
    "blind-index",  # the Cortex store's keyed blind indexes (HMAC-SHA256), never for sealing
)

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MAX_FIELD: Final = 0xFFFF

InfoField = str | bytes | int


def encode_fields(*fields: InfoField) -> bytes:
    """Injective encoding of a sequence of fields: tag (1) | length (2) | value, per field."""
    out = bytearray()
    for value in fields:
        if isinstance(value, bool):  # bool is an int; refuse rather than guess
            raise TypeError("bool is not an info field")
        if isinstance(value, str):
            tag, raw = b"s", value.encode("utf-8")
        elif isinstance(value, bytes):
            tag, raw = b"b", value
        elif isinstance(value, int):
            if value < 0:
                raise ValueError("integer info fields must be non-negative")
            tag, raw = b"i", value.to_bytes(8, "big")
        else:
            raise TypeError(f"unsupported info field type {type(value).__name__}")
        if len(raw) > _MAX_FIELD:
            raise ValueError("info field too long")
        out += tag + len(raw).to_bytes(2, "big") + raw
    return bytes(out)


def build_info(label: str, *fields: InfoField) -> bytes:
    """The HKDF `info` for one derivation: app, version, label, then the caller's fields."""
    return encode_fields(APP, VERSION, label, *fields)


def hkdf(secret: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    # No salt: every input secret here is a uniformly random 32-byte key (RFC 5869 section 3.1).
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def validate_name(kind: str, value: str) -> str:
    """Component and purpose names: short, lowercase, printable, no '/' (they appear in ids)."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is not valid: 1-32 characters of a-z, 0-9 and '-', "
            "starting with a letter"
        )
    return value


def validate_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}; known purposes: {', '.join(PURPOSES)}")
    return purpose


def derive_purpose_key(root: bytes, component: str, purpose: str, epoch: int) -> bytes:
    """The 32-byte key for `purpose` of `component` in `epoch`, from that epoch's root key."""
    return hkdf(root, build_info("purpose-key", component, purpose, epoch))


def derive_purpose_key_id(root: bytes, component: str, purpose: str, epoch: int) -> str:
    """`<purpose>/e<epoch>/<8 hex>`: printable, unique per key, and says nothing about the key.

    The hex comes from its own HKDF output (label "purpose-key-id"), not from hashing the key,
    so publishing ids in logs and sealed headers reveals nothing about the key bytes.
    """
    tag = hkdf(root, build_info("purpose-key-id", component, purpose, epoch), length=4)
    return f"{purpose}/e{epoch}/{tag.hex()}"


def derive_master_key_id(master: bytes) -> str:
    """`master/<8 hex>`: names a master key in the keyring and in status output."""
    return f"master/{hkdf(master, build_info('master-key-id'), length=4).hex()}"
