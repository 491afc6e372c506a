"""Fuzzing eBPF ring-buffer record decoding (alpha.sensors.decode.decode_record).

Records come from the kernel, but a length field, a path or a sockaddr is only as good as the
BPF program that filled it: any record of any length must decode or raise `DecodeError`.
Seeds: a header of every kind followed by its payload (zeros, or random bytes).
"""

from __future__ import annotations

import struct
from typing import Final

from hypothesis import given
from hypothesis import strategies as st

from alpha.sensors import decode as d
from tests.fuzz.harness import corpus, fuzz_settings, guarded, mutated, with_examples

_LARGEST: Final = max(d.struct_size(name) for name in d.PAYLOAD_FIELDS)


def header(kind: int, syscall: int = 0) -> bytes:
    return struct.pack(
        "<QQqIIIIII16s", 5_000_000_000, 77, -1, kind, syscall, 101, 100, 1000, 1001, b"comm\0junk"
    )


SEEDS: Final = [
    header(kind, sc) + bytes(_LARGEST - d.HEADER_SIZE) for kind in d.KIND_NAMES for sc in (0, 3)
]


def _check(buf: bytes) -> None:
    guarded(lambda: d.decode_record(buf), d.DecodeError)


@fuzz_settings(300)
@with_examples(corpus("bpf_decode"))
@given(mutated(SEEDS, tokens=[b"\xff" * 4, b"\x00" * 8, b"/tmp/x\x00", b"\x02\x00", b"\x0a\x00"]))
def test_records_mutated(buf: bytes) -> None:
    _check(buf)


@fuzz_settings(300)
@given(
    st.sampled_from([*sorted(d.KIND_NAMES), 0, d.KIND_MAX, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=_LARGEST + 64),
)
def test_records_random_payload(kind: int, syscall: int, payload: bytes) -> None:
    _check(header(kind, syscall % 256 if syscall % 2 else syscall) + payload)
