"""AIP-158 paging for the read API: page sizes, and page tokens bound to what they page through.

A page token is opaque to clients: URL-safe base64 (no padding) of a version byte, the position to
resume from (the store's `Position.token()`, or an offset for guardians) and an HMAC-SHA256 tag.
The tag covers the position *and* what the token is bound to, which the token does not carry: the
collection (`events`, `guardians`), the store id, and the canonical filter and order_by
(`Filter.canonical`, `Order.canonical`). So a token reused with another filter or order (even one
spelt differently but meaning the same thing is accepted: the canonical text is bound), with
another store, or edited by a client does not verify and is INVALID_ARGUMENT (`PageTokenError`),
never a page of something else. The server keeps no state per token; the key is the caller's
(`PageTokens(key)`), so tokens survive a restart when the key does.

Why authenticate rather than just encode: a position names a (time, rowid) of the store; without
the tag a client could hand-craft positions, or carry one from a narrow filter into a broad one
and learn where in the store rows it may not have listed sit. The tag costs one HMAC per page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from cortex.errors import FilterError, PageSizeError, PageTokenError
from cortex.filter.literals import shown

R = TypeVar("R")

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
# Longest token accepted before any decoding: a position is ~40 characters.
MAX_TOKEN_CHARS: Final = 512
MIN_KEY_BYTES: Final = 16
_VERSION: Final = b"\x01"
_TAG_BYTES: Final = 32
_LABEL: Final = b"qsc.cortex.page-token.v1"
_REFUSAL: Final = (
    "page_token is not valid for this request: it is malformed or altered, or was issued for "
    "another filter, order_by or store; list again from the first page"
)


def page_size(requested: int) -> int:
    """The number of results to return for a request's `page_size` (AIP-158): 0 is the default,
    anything above the maximum is capped to it (not refused: clients ask for "as many as you
    give"), a negative value is PageSizeError."""
    if requested < 0:
        raise PageSizeError(
            f"page_size must not be negative (got {requested}); 0 means the default "
            f"({DEFAULT_PAGE_SIZE})",
            page_size=str(requested),
        )
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class PageBinding:
    """What a token is valid for: the same collection of the same store, with the same canonical
    filter and order."""

    collection: str
    store_id: str
    filter: str
    order_by: str

    def _encoded(self) -> bytes:
        parts = (self.collection, self.store_id, self.filter, self.order_by)
        return b"".join(_length_prefixed(p.encode()) for p in parts)


class PageTokens:
    """Issues and opens page tokens under one HMAC key (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a page token key needs at least {MIN_KEY_BYTES} bytes")
        self._key = bytes(key)

    def issue(self, binding: PageBinding, position: str) -> str:
        """The token that resumes after `position` for `binding`."""
        raw = position.encode("ascii")
        body = _VERSION + raw
        return _b64(body + self._tag(binding, raw))

    def open(self, binding: PageBinding, token: str) -> str:
        """The position `token` resumes after, when it was issued for `binding` under this key;
        PageTokenError otherwise (one message for every kind of bad token)."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise PageTokenError(_REFUSAL)
        try:
            padded = token + "=" * (-len(token) % 4)
            data = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise PageTokenError(_REFUSAL) from None
        if len(data) <= len(_VERSION) + _TAG_BYTES or not data.startswith(_VERSION):
            raise PageTokenError(_REFUSAL)
        raw, tag = data[len(_VERSION) : -_TAG_BYTES], data[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(binding, raw)):
            raise PageTokenError(_REFUSAL)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:  # only with the key: issued by a broken caller
            raise PageTokenError(_REFUSAL) from None

    def _tag(self, binding: PageBinding, raw: bytes) -> bytes:
        message = _length_prefixed(_LABEL) + binding._encoded() + _length_prefixed(raw)
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _length_prefixed(data: bytes) -> bytes:
    """Unambiguous concatenation: ("ab", "c") and ("a", "bc") must not tag alike."""
    return len(data).to_bytes(4, "big") + data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SortOrder:
    """An `order_by` of one field, ascending or descending."""

    field: str
    descending: bool

    @property
    def canonical(self) -> str:
        return f"{self.field} desc" if self.descending else self.field


def parse_order(text: str, fields: Collection[str], *, what: str, default: str) -> SortOrder:
    """`order_by` as one of `fields` with an optional asc/desc; empty is `default`, newest
    first. FilterError (argument `order_by`, a position) otherwise."""
    words = text.split()
    if not words:
        return SortOrder(default, True)
    if len(words) > 2 or words[0] not in fields:
        raise FilterError(
            1,
            f"{what} are ordered by one of {', '.join(fields)} [asc|desc], not {shown(text)}",
            argument="order_by",
        )
    if len(words) == 2 and words[1].lower() not in ("asc", "desc"):
        raise FilterError(
            len(words[0]) + 2, f"expected asc or desc, found {shown(words[1])}", argument="order_by"
        )
    return SortOrder(words[0], len(words) == 2 and words[1].lower() == "desc")


def keyset_page(
    matching: Sequence[R],
    key: Callable[[R], int | float],
    record_id: Callable[[R], str],
    *,
    descending: bool,
    size: int,
    page_token: str,
    tokens: PageTokens,
    binding: PageBinding,
) -> tuple[tuple[R, ...], str]:
    """One page of `matching` (sorted by (key, id), `descending` or not) after the (value, id)
    `page_token` names, and the token of the next page ("" at the end)."""
    start = 0
    if page_token:
        value, _, after_id = tokens.open(binding, page_token).partition(" ")
        try:
            # Times are integers (exact); confidences are floats, written with repr.
            number = int(value) if re.fullmatch(r"-?\d+", value) else float(value)
        except ValueError:
            raise PageTokenError("page_token is malformed") from None
        after = (number, after_id)
        start = len(matching)
        for i, r in enumerate(matching):
            here = (key(r), record_id(r))
            if (here < after) if descending else (here > after):
                start = i
                break
    page = tuple(matching[start : start + size])
    token = ""
    if start + size < len(matching) and page:
        last = page[-1]
        token = tokens.issue(binding, f"{key(last)!r} {record_id(last)}")
    return page, token
