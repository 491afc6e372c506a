"""Find every secret a run left on disk, then look for it everywhere else the run wrote.

A secret is what a file of one of these kinds holds: a component's `master.key` (32 raw bytes),
a PEM private key (a TLS leaf's or the CA's), a Standard Webhooks secret (`whsec_...`) or a
header token (`*.token`). Each is looked for in the forms a leak would take: its raw bytes, hex,
base64 (with and without padding, standard and URL-safe), and for a PEM key its base64 body
lines and its private scalar. The search is `grep -F` (Aho-Corasick, linear in the bytes read)
over every other file below the root: logs, captured output, configurations, run records,
stores, outboxes, core files.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

MAX_SECRET_FILE: Final = 64 * 1024
MIN_NEEDLE: Final = 12  # bytes of a high-entropy form: never matches by chance


@dataclass(frozen=True)
class Secret:
    source: Path
    kind: str
    needles: tuple[bytes, ...]


def _encodings(raw: bytes) -> Iterator[bytes]:
    yield raw
    yield raw.hex().encode()
    yield raw.hex().upper().encode()
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        text = enc(raw)
        yield text
        yield text.rstrip(b"=")


def _searchable(needle: bytes) -> bytes | None:
    """grep -F reads one pattern a line and stops at NUL: keep the longest piece with neither."""
    pieces = needle.replace(b"\0", b"\n").split(b"\n")
    best = max(pieces, key=len)
    return best if len(best) >= MIN_NEEDLE else None


def _private_scalar(pem: bytes) -> bytes | None:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        return key.private_numbers().private_value.to_bytes(size, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    if isinstance(key, rsa.RSAPrivateKey):
        d = key.private_numbers().d
        return d.to_bytes((d.bit_length() + 7) // 8, "big")
    return None


def _secret_of(path: Path, data: bytes) -> Secret | None:
    if path.name == "master.key" and len(data) == 32:
        return Secret(path, "master key", tuple(_encodings(data)))
    if data.startswith(b"-----BEGIN") and b"PRIVATE KEY-----" in data:
        body = [
            line.strip()
            for line in data.splitlines()
            if line.strip() and not line.startswith(b"-----")
        ]
        needles = [line for line in body if len(line) >= 40]
        scalar = _private_scalar(data)
        if scalar is not None:
            needles.extend(_encodings(scalar))
        return Secret(path, "private key", tuple(needles))
    text = data.strip()
    if text.startswith(b"whsec_"):
        key = base64.b64decode(text[len(b"whsec_") :] + b"==")
        return Secret(path, "webhook secret", (text, *_encodings(key)))
    if path.suffix == ".token" and len(text) >= MIN_NEEDLE:
        return Secret(path, "header token", (text,))
    return None


def _files(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    yield path
            except OSError:
                continue


def find_secrets(root: Path) -> list[Secret]:
    """Every secret file below `root` and its needles."""
    found = []
    for path in _files(root):
        try:
            if path.stat().st_size > MAX_SECRET_FILE:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        secret = _secret_of(path, data)
        if secret is not None:
            found.append(secret)
    return found


def leaks(root: Path, secrets: list[Secret], workdir: Path) -> dict[Path, list[str]]:
    """Files below `root` (not the secret files themselves) holding a form of some secret:
    {file: ["<kind> of <source>", ...]}."""
    sources = {s.source for s in secrets}
    owner: dict[bytes, Secret] = {}
    for secret in secrets:
        for needle in secret.needles:
            piece = _searchable(needle)
            if piece is not None:
                owner.setdefault(piece, secret)
    if not owner:
        return {}  # an empty pattern would match every file
    patterns = workdir / "needles"
    patterns.write_bytes(b"\n".join(owner) + b"\n")
    # -a binary as text, -l names only, -r below root; LC_ALL=C: bytes, not characters.
    hits = subprocess.run(
        ["grep", "-F", "-a", "-l", "-r", "-f", str(patterns), str(root)],
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
    )
    if hits.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {hits.stderr.decode(errors='replace')}")
    found: dict[Path, list[str]] = {}
    for line in hits.stdout.decode(errors="surrogateescape").splitlines():
        path = Path(line)
        if path in sources or path == patterns:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if _secret_of(path, data) is not None:
            continue  # another copy of a secret file (a test's own fixture), not a leak
        names = sorted({f"{s.kind} of {s.source}" for n, s in owner.items() if n in data})
        if names:
            found[path] = names
    return found
