"""Nonce sources: persisted counters survive crashes without reuse; corrupt state is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import crypto.nonces as nonces_mod
from crypto.errors import NonceExhaustedError, NonceStateError
from crypto.nonces import (
    CounterNonceSource,
    RandomNonceSource,
    SequenceNonceSource,
    StreamNonce,
    read_counter_state,
)

REPO = Path(__file__).resolve().parents[2]


def counter_of(nonce: bytes) -> int:
    return int.from_bytes(nonce[4:], "big")


def test_counter_nonce_layout(tmp_path: Path) -> None:
    fixed = b"\xaa\xbb\xcc\xdd"
    with CounterNonceSource.create(tmp_path / "s", "k", fixed_field=fixed) as src:
        assert [src.next_nonce() for _ in range(3)] == [
            fixed + i.to_bytes(8, "big") for i in range(3)
        ]


def test_mark_is_durable_before_any_counter_of_a_block_is_used(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with CounterNonceSource.create(path, "k", block_size=16) as src:
        for _ in range(100):
            counter = counter_of(src.next_nonce())
            # What a process restarted right now would see on disk:
            assert read_counter_state(path).reserved_until > counter


def test_restart_skips_every_counter_that_might_have_been_used(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with CounterNonceSource.create(path, "k", block_size=10) as src:
        used = [counter_of(src.next_nonce()) for _ in range(13)]  # reserved up to 20
    with CounterNonceSource.open(path, "k", block_size=10) as src:
        first = counter_of(src.next_nonce())
    assert used == list(range(13))
    assert first == 20


def test_write_failure_hands_out_nothing_from_the_unreserved_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s"
    src = CounterNonceSource.create(path, "k", block_size=2)
    src.next_nonce()
    src.next_nonce()

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nonces_mod, "_write_state_durably", disk_full)
    with pytest.raises(OSError, match="No space"):
        src.next_nonce()
    monkeypatch.undo()
    assert counter_of(src.next_nonce()) == 2  # retried, now reserved first
    assert read_counter_state(path).reserved_until == 4
    src.close()


def test_create_refuses_an_existing_state_and_open_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with pytest.raises(NonceStateError, match="does not exist"):
        CounterNonceSource.open(path, "k")
    CounterNonceSource.create(path, "k").close()
    with pytest.raises(NonceStateError, match="already exists"):
        CounterNonceSource.create(path, "k")


def test_state_of_another_key_or_fixed_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CounterNonceSource.create(path, "key-a", fixed_field=b"\x00\x00\x00\x01").close()
    with pytest.raises(NonceStateError, match="another key"):
        CounterNonceSource.open(path, "key-b")
    with pytest.raises(NonceStateError, match="fixed field"):
        CounterNonceSource.open(path, "key-a", fixed_field=b"\x00\x00\x00\x02")
    CounterNonceSource.open(path, "key-a", fixed_field=b"\x00\x00\x00\x01").close()


def _valid_state(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "s"
    with CounterNonceSource.create(path, "k", block_size=1000) as src:
        src.next_nonce()
    return path, path.read_bytes()


def _edited(raw: bytes, **changes: object) -> bytes:
    doc = json.loads(raw)
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: b"",
        lambda raw: raw[: len(raw) // 2],  # truncated mid-write by a non-atomic writer
        lambda raw: raw[:-3],
        lambda raw: b"\xff\xfe" + raw,
        lambda raw: b"[]",
        lambda raw: raw.replace(b"1000", b"0000"),  # bit rot in the mark
        lambda raw: _edited(raw, reserved_until=0),  # "reset to zero" with a stale digest
        lambda raw: _edited(raw, reserved_until="1000"),
        lambda raw: _edited(raw, key_id="other"),
        lambda raw: _edited(raw, fixed_field="00"),
        lambda raw: _edited(raw, format="something-else"),
        lambda raw: b"x" * 10_000,
    ],
)
def test_corrupt_state_is_refused_never_reset(tmp_path: Path, corrupt: object) -> None:
    path, raw = _valid_state(tmp_path)
    assert callable(corrupt)
    path.write_bytes(corrupt(raw))
    with pytest.raises(NonceStateError):
        CounterNonceSource.open(path, "k")
    assert path.read_bytes() == corrupt(raw)  # left as found, for the operator


def test_unknown_state_version_is_refused(tmp_path: Path) -> None:
    path, raw = _valid_state(tmp_path)
    path.write_bytes(_edited(raw, version=2))
    with pytest.raises(NonceStateError, match="version"):
        CounterNonceSource.open(path, "k")


def test_leftover_temp_file_from_a_crashed_write_is_harmless(tmp_path: Path) -> None:
    path, _ = _valid_state(tmp_path)
    (tmp_path / ".s.abc123.tmp").write_bytes(b'{"format": "qsc-nonce-')
    with CounterNonceSource.open(path, "k") as src:
        assert counter_of(src.next_nonce()) == 1000


def test_state_file_is_private(tmp_path: Path) -> None:
    path, _ = _valid_state(tmp_path)
    assert path.stat().st_mode & 0o077 == 0


def test_two_sources_cannot_share_a_state_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    first = CounterNonceSource.create(path, "k")
    with pytest.raises(NonceStateError, match="in use"):
        CounterNonceSource.open(path, "k")
    first.close()
    with pytest.raises(NonceStateError, match="closed"):
        first.next_nonce()
    CounterNonceSource.open(path, "k").close()


def test_exhaustion_is_an_error_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with CounterNonceSource.create(path, "k", block_size=2, limit=5) as src:
        assert [counter_of(src.next_nonce()) for _ in range(5)] == [0, 1, 2, 3, 4]
        with pytest.raises(NonceExhaustedError):
            src.next_nonce()
    with CounterNonceSource.open(path, "k", limit=5) as src, pytest.raises(NonceExhaustedError):
        src.next_nonce()


def test_full_64_bit_counter_space_ends_in_exhaustion(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CounterNonceSource.create(path, "k").close()
    state = read_counter_state(path)
    nonces_mod._write_state_durably(
        path, nonces_mod.CounterState(state.key_id, state.fixed_field, 2**64 - 1)
    )
    with CounterNonceSource.open(path, "k") as src:
        assert src.next_nonce()[4:] == b"\xff" * 8
        with pytest.raises(NonceExhaustedError):
            src.next_nonce()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_cannot_reuse_the_parents_counter(tmp_path: Path) -> None:
    with CounterNonceSource.create(tmp_path / "s", "k") as src:
        src.next_nonce()
        pid = os.fork()
        if pid == 0:  # child
            try:
                src.next_nonce()
                os._exit(1)
            except NonceStateError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        src.next_nonce()  # the parent carries on


_SEALING_CHILD = textwrap.dedent(
    """
    import sys
    from crypto.aead import AeadKey, Algorithm, Sealer
    from crypto.nonces import CounterNonceSource
    key = AeadKey("k-crash", bytes(32), Algorithm.AES_256_GCM)
    src = CounterNonceSource.open(sys.argv[1], key.key_id, block_size=50)
    sealer = Sealer(key, src)
    while True:
        sealed = sealer.seal(b"event")
        sys.stdout.write(sealed[4 + 7 : 4 + 7 + 12].hex() + "\\n")
        sys.stdout.flush()
    """
)


def _seal_until_killed(state: Path, count: int) -> list[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SEALING_CHILD, str(state)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    assert proc.stdout is not None
    seen = [proc.stdout.readline() for _ in range(count)]
    proc.send_signal(signal.SIGKILL)  # no atexit, no flush, no close: a crash
    seen += proc.stdout.readlines()  # whatever it got out before dying
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return [bytes.fromhex(line) for line in seen if line.endswith("\n")]


def test_no_nonce_repeats_across_kill_9_and_restart(tmp_path: Path) -> None:
    state = tmp_path / "k-crash.nonce"
    CounterNonceSource.create(state, "k-crash").close()
    all_nonces: list[bytes] = []
    for count in (137, 20, 333):  # kill at different points inside a block
        all_nonces += _seal_until_killed(state, count)
    with CounterNonceSource.open(state, "k-crash", block_size=50) as src:
        all_nonces += [src.next_nonce() for _ in range(100)]
    assert len(all_nonces) >= 137 + 20 + 333 + 100
    assert len(set(all_nonces)) == len(all_nonces)


def test_random_source_sizes_and_limits() -> None:
    assert len(RandomNonceSource().next_nonce()) == 24
    src = RandomNonceSource.aes_gcm()
    assert src.nonce_size == 12
    assert len({src.next_nonce() for _ in range(1000)}) == 1000
    assert src.used == 1000
    capped = RandomNonceSource(24, limit=2)
    capped.next_nonce()
    capped.next_nonce()
    with pytest.raises(NonceExhaustedError):
        capped.next_nonce()
    with pytest.raises(ValueError, match="12 or 24"):
        RandomNonceSource(16)


def test_random_96_bit_nonces_are_always_capped_at_2_pow_32() -> None:
    assert RandomNonceSource(12)._limit == 2**32
    assert RandomNonceSource(12, limit=10)._limit == 10
    with pytest.raises(ValueError, match="2\\*\\*32"):
        RandomNonceSource(12, limit=2**32 + 1)
    assert RandomNonceSource(24)._limit is None


@pytest.mark.parametrize("size", [12, 24])
def test_stream_nonce_layout_and_inverse(size: int) -> None:
    s = StreamNonce(stream_id=2, size=size)
    n = s.for_sequence(0x0102030405060708)
    assert len(n) == size
    assert n[:4] == b"\x00\x00\x00\x02"
    assert n[-8:] == bytes.fromhex("0102030405060708")
    assert n[4:-8] == bytes(size - 12)
    assert s.sequence_of(n) == 0x0102030405060708
    with pytest.raises(ValueError, match="stream"):
        StreamNonce(stream_id=1, size=size).sequence_of(n)
    with pytest.raises(ValueError, match="64 bits"):
        s.for_sequence(2**64)


def test_directions_never_share_a_nonce() -> None:
    a, b = StreamNonce(1), StreamNonce(2)
    assert {a.for_sequence(i) for i in range(100)}.isdisjoint(b.for_sequence(i) for i in range(100))


def test_sequence_source_counts_up_and_ends() -> None:
    src = SequenceNonceSource(StreamNonce(7), start=5)
    assert src.next_sequence == 5
    assert StreamNonce(7).sequence_of(src.next_nonce()) == 5
    assert src.next_sequence == 6
    last = SequenceNonceSource(StreamNonce(7), start=2**64 - 1)
    last.next_nonce()
    with pytest.raises(NonceExhaustedError):
        last.next_nonce()
