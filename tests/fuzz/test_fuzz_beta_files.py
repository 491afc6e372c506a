"""Fuzzing Beta's own files read back from disk: backup manifests and FIM baselines.

Both are authenticated with a keyring key, so two kinds of input: a mutated file as planted on
disk (no key: it must be refused before anything in it is interpreted), and mutated content
re-authenticated with the key (a buggy writer holding it: the parser proper). Documented
refusals: `ManifestError` (load_manifest) and `BaselineTamperedError` (baseline.decode).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import zlib
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given

from beta.backups.manifest import (
    PURPOSE as MANIFEST_PURPOSE,
)
from beta.backups.manifest import (
    ManifestEntry,
    ManifestError,
    _auth_aad,
    encode_manifest,
    load_manifest,
)
from beta.fim import baseline
from beta.fim.baseline import Baseline, BaselineTamperedError, Entry
from beta.fim.metadata import FileMeta, FileType
from crypto.aead import Sealer
from crypto.keyring import KeyManager
from tests.fuzz.harness import (
    corpus,
    corpus_ids,
    fuzz_settings,
    guarded,
    mutated,
    with_examples,
)

_DIR: Final = Path(tempfile.mkdtemp(prefix="qsc-fuzz-beta-"))
KEYS: Final = KeyManager.create(_DIR / "keys", "beta")
MKEY: Final = KEYS.active_key(MANIFEST_PURPOSE)
T0: Final = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
MANIFEST: Final = encode_manifest(
    backup_set="db",
    created=T0,
    encrypted=False,
    exclude=("*.tmp",),
    entries=[
        ManifestEntry("a/x.dump", 10, hashlib.sha3_256(b"x").digest()),
        ManifestEntry("b.dump", 20, hashlib.sha3_256(b"y").digest()),
        ManifestEntry("caf\udce9", 0, bytes(32)),
    ],
    key=MKEY,
)
_META: Final = FileMeta(FileType.REGULAR, 0o644, 0, 0, 42, 1, 1, 2, None, (("user.k", b"v"),))
BASELINE: Final = baseline.encode(
    Baseline(
        {
            "/etc/a": Entry("/etc/a", _META, bytes(range(32))),
            "/etc/l": Entry("/etc/l", FileMeta(FileType.SYMLINK, 0o777, 0, 0, 7, 4, 1, 2, "t", ())),
        },
        created=1.0,
        updated=2.0,
        host="h1",
        config_digest="cfg",
    ),
    KEYS,
)
JSON_TOKENS: Final = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"1e400",
    b"\\ud800",
    b'"path"',
    b'"size"',
    b'"auth"',
    b"\n",
]


def _load_manifest(data: bytes) -> object:
    path = _DIR / "manifest.jsonl"
    path.write_bytes(data)
    return load_manifest(path, KEYS)


def _reauthenticated(data: bytes) -> bytes:
    """`data` as the body of a manifest that authenticates: what a keyholder could write."""
    body = data if data.endswith(b"\n") else data + b"\n"
    tag = Sealer(MKEY).seal(b"", _auth_aad(hashlib.sha3_256(body).digest()))
    import base64

    return body + json.dumps({"auth": base64.b64encode(tag).decode()}).encode() + b"\n"


@fuzz_settings(150)
@with_examples(corpus("manifest"))
@given(mutated([MANIFEST], tokens=JSON_TOKENS))
def test_manifest_planted(data: bytes) -> None:
    guarded(lambda: _load_manifest(data), ManifestError)


_BODY: Final = MANIFEST[: MANIFEST.rfind(b"\n", 0, len(MANIFEST) - 1) + 1]


@fuzz_settings(150)
@given(mutated([_BODY], tokens=JSON_TOKENS))
def test_manifest_authentic_but_malformed(body: bytes) -> None:
    data = _reauthenticated(body)
    guarded(lambda: _load_manifest(data), ManifestError)


@pytest.mark.parametrize("name", corpus_ids("manifest"))
def test_manifest_former_crashes(name: str) -> None:
    """Found by fuzzing: a last line of JSON nested ~1000 deep raised RecursionError before any
    authentication; now the manifest is refused as tampered."""
    data = corpus("manifest", "crash")[corpus_ids("manifest").index(name)]
    with pytest.raises(ManifestError):
        _load_manifest(data)


def _decode(data: bytes) -> object:
    return baseline.decode(data, KEYS, where="fuzz")


@fuzz_settings(150)
@given(mutated([BASELINE], tokens=[b"\n", b" ", b"version=", b"revision=", b"9" * 30]))
def test_baseline_planted(data: bytes) -> None:
    guarded(lambda: _decode(data), BaselineTamperedError)


_PLAIN: Final = json.dumps(
    {
        "format": "qsc-fim-baseline",
        "format_version": 1,
        "version": 1,
        "revision": 1,
        "created": 1.0,
        "updated": 2.0,
        "host": "h1",
        "config_digest": "cfg",
        "entries": [
            ["/etc/a", "f", 420, 0, 0, 42, 1, 1, 2, "00" * 32, None, [["user.k", "dg=="]]],
            ["/etc/l", "l", 511, 0, 0, 7, 4, 1, 2, None, "t", []],
        ],
    },
    separators=(",", ":"),
).encode()


@fuzz_settings(150)
@given(mutated([_PLAIN], tokens=JSON_TOKENS))
def test_baseline_authentic_but_malformed(plain: bytes) -> None:
    header = b"QSC-FIM-BASELINE 1 version=1 revision=1\n"
    data = header + Sealer(KEYS.active_key(baseline.PURPOSE)).seal(zlib.compress(plain), header)
    guarded(lambda: _decode(data), BaselineTamperedError)


def test_seeds_load() -> None:
    assert not isinstance(guarded(lambda: _load_manifest(MANIFEST), ()), BaseException)
    assert not isinstance(guarded(lambda: _decode(BASELINE), ()), BaseException)
