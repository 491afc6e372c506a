"""How a webhook is authenticated to its receiver: Standard Webhooks signatures or a token.

    auth = SigningSecrets.from_files([Path("/etc/qsc/secrets/soar.whsec")])
    headers = auth.headers(msg_id, timestamp_s, body)
    # {"webhook-id": ..., "webhook-timestamp": "1796...", "webhook-signature": "v1,... v1,..."}

Standard Webhooks (standardwebhooks.com): the signature is HMAC-SHA256 with the secret over
`id.timestamp.body`, base64, prefixed `v1,`; with several secrets (a rollover: the new one
added before the old one is removed) every one signs and the signatures are space-separated,
so a receiver holding either verifies. `webhook-id` is the assessment id and revision, stable
across retries, so receivers deduplicate. The MAC is the `standardwebhooks` package's, not ours.

Receivers that cannot verify an HMAC (n8n's header auth, Shuffle) get a static header token
instead (`HeaderToken`): the same ids and timestamp, plus `NAME: token`.

Secrets live in files that must be private (mode 0600: `crypto.keyfile.read_private_file`);
their values never appear in a repr, a log line or a run record (`describe()` names the files).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from standardwebhooks.webhooks import Webhook

from cortex.errors import PlaybookSecretError
from crypto.errors import KeyFileError
from crypto.keyfile import read_private_file

__all__ = ["HeaderToken", "SigningSecrets", "webhook_id"]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
MIN_SECRET_BYTES: Final = 24  # Standard Webhooks: 24 to 64 bytes of randomness
MAX_SECRET_BYTES: Final = 64
MAX_FILE_BYTES: Final = 4096
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_RESERVED: Final = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})


def webhook_id(assessment_id: str, revision: int, playbook: str, step: int) -> str:
    """The `webhook-id` of one step's delivery of one revision: stable across retries and
    restarts, different per playbook step (one receiver may be the target of two)."""
    return f"{assessment_id}.{revision}.{playbook}.{step}"


def _read(path: Path, what: str) -> str:
    try:
        raw = read_private_file(path, what=what)
    except KeyFileError as exc:
        raise PlaybookSecretError(str(exc)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise PlaybookSecretError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise PlaybookSecretError(f"{what} {path}: not ASCII text") from None


@dataclass(frozen=True)
class _Secret:
    path: Path
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class SigningSecrets:
    """The secrets a webhook is signed with, newest first (all sign during a rollover)."""

    secrets: tuple[_Secret, ...] = field(repr=False)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> SigningSecrets:
        """Each file holds one `whsec_<base64>` secret. PlaybookSecretError names the file and
        what is wrong with it (never its content)."""
        if not paths:
            raise PlaybookSecretError("a signed webhook needs at least one secret file")
        loaded = []
        for path in paths:
            text = _read(path, "webhook secret")
            if not text.startswith(SECRET_PREFIX):
                raise PlaybookSecretError(
                    f"webhook secret {path}: must start with {SECRET_PREFIX!r} followed by "
                    "base64 (the Standard Webhooks secret format)"
                )
            try:
                key = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
            except (binascii.Error, ValueError):
                raise PlaybookSecretError(f"webhook secret {path}: not valid base64") from None
            if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
                raise PlaybookSecretError(
                    f"webhook secret {path}: {len(key)} bytes; Standard Webhooks secrets are "
                    f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
                )
            loaded.append(_Secret(path, key))
        return cls(tuple(loaded))

    def describe(self) -> str:
        return ", ".join(str(s.path) for s in self.secrets)

    def headers(self, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
        when = dt.datetime.fromtimestamp(timestamp_s, dt.UTC)
        signatures = " ".join(Webhook(s.key).sign(msg_id, when, body) for s in self.secrets)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": signatures,
        }


@dataclass(frozen=True)
class HeaderToken:
    """A static token in one header, for receivers that cannot verify an HMAC."""

    name: str
    path: Path
    token: str = field(repr=False)

    @classmethod
    def from_file(cls, name: str, path: Path) -> HeaderToken:
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED:
            raise PlaybookSecretError(
                f"header {name!r}: a token header is a plain HTTP header name, not one of "
                f"{', '.join(sorted(_RESERVED))}"
            )
        token = _read(path, "header token")
        if not token or any(c in token for c in "\r\n") or len(token) < 16:
            raise PlaybookSecretError(
                f"header token {path}: must be one line of at least 16 characters"
            )
        return cls(name, path, token)

    def describe(self) -> str:
        return f"{self.name} from {self.path}"

    def headers(self, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
        del body  # the token does not depend on it
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp_s), self.name: self.token}
