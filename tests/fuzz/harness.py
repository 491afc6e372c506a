"""Shared pieces of the fuzz tests: budgets, mutation strategies, the corpus and the guard.

Every fuzz test asserts one thing of a parser that takes outside bytes: whatever the input, it
returns or raises its own documented error, never another exception, a hang or a large
allocation. `guarded` runs one call under a wall-clock alarm and a tracemalloc peak bound.

Budgets: each test names a CI example count (the whole tests/fuzz set runs in well under 25 s);
`QSC_FUZZ_EXAMPLES=N` raises every test to at least N examples (`make fuzz`).

Corpus (tests/fuzz/corpus/<target>/): `ok-*` files are interesting inputs the parser must
refuse cleanly, replayed as explicit examples; `crash-*` files are inputs that crash it today,
replayed by a strict xfail test naming the finding (see KNOWN below).
"""

from __future__ import annotations

import os
import re
import signal
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CORPUS: Final = Path(__file__).parent / "corpus"
REPO: Final = Path(__file__).parents[2]
# One call of a parser on one input: far above any legitimate cost, far below a hang.
CALL_SECONDS: Final = 5.0
# Peak Python allocation of one call: inputs are at most ~100 KB, parsers must stay near that.
CALL_PEAK_BYTES: Final = 64 * 1024 * 1024

T = TypeVar("T")


def budget(ci: int) -> int:
    """The example count of a test: `ci` in CI, at least QSC_FUZZ_EXAMPLES when it is set."""
    raised = os.environ.get("QSC_FUZZ_EXAMPLES", "")
    return max(ci, int(raised)) if raised.isdigit() else ci


def fuzz_settings(ci: int, *, deadline_ms: int = 1000) -> settings:
    """Bounded settings: `budget(ci)` examples, a per-example deadline, no example database
    (found inputs go into the corpus, not into an untracked .hypothesis folder)."""
    return settings(
        max_examples=budget(ci),
        deadline=deadline_ms,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the guard ------------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so no parser's `except Exception` swallows it."""


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def ring(_signum: int, _frame: FrameType | None) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Known:
    """A crash found by fuzzing and not fixed yet: an exception type and message that the
    generative tests tolerate (the strict xfail corpus test keeps it visible)."""

    name: str
    error: type[BaseException]
    message: str  # a regular expression searched in str(exc)

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.error) and re.search(self.message, str(exc)) is not None


# The first pass's findings (numbers over 4300 digits in sshd lines, TOML nested too deep,
# durations past timedelta, JSON nested too deep in a manifest) are fixed; their inputs stay
# in corpus/ as crash-* regression cases. A new finding goes here while it is open.


def guarded(
    call: Callable[[], T],
    expected: type[BaseException] | tuple[type[BaseException], ...],
    *,
    known: Sequence[Known] = (),
) -> T | BaseException:
    """Run `call`: its result, or the `expected` error it raised. Any other exception (unless
    a `known` finding) propagates; a hang or a peak allocation above the bound fails."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        try:
            with _alarm(CALL_SECONDS):
                try:
                    outcome: T | BaseException = call()
                except expected as exc:
                    outcome = exc
                except Exception as exc:
                    if not any(k.matches(exc) for k in known):
                        raise
                    outcome = exc
        except _Hang:
            raise AssertionError(
                f"a parser call ran longer than {CALL_SECONDS} s (a hang)"
            ) from None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    assert peak <= CALL_PEAK_BYTES, f"one parser call allocated {peak} bytes at its peak"
    return outcome


# --- the corpus -----------------------------------------------------------------------------


def corpus(target: str, kind: str = "ok") -> list[bytes]:
    """The `kind` (ok or crash) inputs of `target`, sorted by file name."""
    folder = CORPUS / target
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.glob(f"{kind}-*")) if p.is_file()]


def corpus_ids(target: str, kind: str = "crash") -> list[str]:
    folder = CORPUS / target
    return sorted(p.name for p in folder.glob(f"{kind}-*")) if folder.is_dir() else []


def with_examples(values: Sequence[Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Apply `hypothesis.example(v)` for each v (a corpus replayed before any generation)."""
    from hypothesis import example

    def apply(test: Callable[..., None]) -> Callable[..., None]:
        for value in reversed(values):
            test = example(value)(test)
        return test

    return apply


# --- mutation -------------------------------------------------------------------------------

# Bytes that mean something to most of the parsers here: quotes, brackets, separators.
_INTERESTING: Final = b"\x00\x01\x7f\x80\xff\n\r\t \"'\\[]{}()<>=!:,.-*#&|%@$0123456789"
_NUMBERS: Final = (
    b"0",
    b"-1",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"1e999",
    b"nan",
    b"inf",
    b"-0",
    b"0x7fffffff",
    b"1.5",
)


@st.composite
def _one_mutation(draw: st.DrawFn, data: bytes, tokens: tuple[bytes, ...]) -> bytes:
    n = len(data)
    at = draw(st.integers(0, n))
    kind = draw(
        st.sampled_from(
            ("flip", "set", "cut", "insert", "delete", "splice", "nest", "number", "long", "token")
        )
    )
    if kind == "flip" and n:
        i = min(at, n - 1)
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    if kind == "set" and n:
        i = min(at, n - 1)
        return data[:i] + bytes([draw(st.sampled_from(_INTERESTING))]) + data[i + 1 :]
    if kind == "cut":
        return data[:at]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    if kind == "splice" and n:
        start = draw(st.integers(0, n - 1))
        piece = data[start : start + draw(st.integers(1, 256))]
        return data[:at] + piece * draw(st.integers(1, 8)) + data[at:]
    if kind == "nest":
        opener, closer = draw(st.sampled_from(((b"[", b"]"), (b"{", b"}"), (b"(", b")"))))
        depth = draw(st.sampled_from((2, 33, 100, 1000, 3000)))
        return data[:at] + opener * depth + closer * draw(st.sampled_from((0, depth))) + data[at:]
    if kind == "number":
        number = (
            draw(st.sampled_from(_NUMBERS))
            if draw(st.booleans())
            else (b"9" * draw(st.sampled_from((20, 400, 4301, 5000))))
        )
        end = at
        while end < n and data[end : end + 1].isdigit():
            end += 1
        return data[:at] + number + data[end:]
    if kind == "long":
        size = draw(st.sampled_from((257, 1025, 4097, 65537)))
        return (
            data[:at]
            + draw(st.sampled_from((b"A", b"\xe2\x80\xae", b" ", b"\\"))) * size
            + data[at:]
        )
    if tokens:
        return data[:at] + draw(st.sampled_from(tokens)) + data[at:]
    return data


def mutated(
    seeds: Sequence[bytes], *, tokens: Sequence[bytes] = (), max_mutations: int = 4
) -> st.SearchStrategy[bytes]:
    """Seeds with 0..max_mutations mutations: byte flips, interesting bytes, truncation,
    insertion, deletion, splices, deep nesting, huge numbers, long runs, grammar tokens."""
    token_tuple = tuple(tokens)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(list(seeds)))
        for _ in range(draw(st.integers(0, max_mutations))):
            data = draw(_one_mutation(data, token_tuple))
        return data

    return build()


def mutated_text(
    seeds: Sequence[str], *, tokens: Sequence[str] = (), max_mutations: int = 4
) -> st.SearchStrategy[str]:
    """`mutated` for text parsers: UTF-8 in, invalid sequences replaced (as readers decode)."""
    return mutated(
        [s.encode() for s in seeds],
        tokens=[t.encode() for t in tokens],
        max_mutations=max_mutations,
    ).map(lambda b: b.decode("utf-8", errors="replace"))
