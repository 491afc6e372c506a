"""Crypto benchmark: our recipes against the bare library calls, measured in one run.

Run: ``.venv/bin/python tests/bench/bench_crypto.py`` (``make bench``). Not a test: it prints
figures and asserts nothing. Every figure is the median of several repetitions; bare and wrapped
calls are interleaved so drifting CPU frequency hits both alike. About a minute on 2 vCPUs.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl import bindings as sodium

from crypto.aead import AeadKey, Algorithm, Sealer
from crypto.hashing import blake3_file, sha3_256_file
from crypto.kem import QSC_HYBRID_KEM, XWING, HybridKem
from crypto.nonces import CounterNonceSource

MiB = 1024 * 1024
REPS = 7


def per_call(
    fns: dict[str, Callable[[], object]], calls: int, reps: int = REPS
) -> dict[str, float]:
    """Median seconds per call of each function, interleaved across repetitions."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    gc.disable()
    try:
        for _ in range(reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter() - t0) / calls)
    finally:
        gc.enable()
    return {name: statistics.median(ts) for name, ts in times.items()}


def _prefixed(header: bytes, fn: Callable[[], bytes]) -> bytes:
    return header + fn()


def bench_sealing(tmp: Path) -> None:
    print("\nSealing throughput, MB/s (1 MB = 10^6 bytes); ratio = ours / bare library call")
    print(
        f"{'algorithm':<20}{'size':>8}{'bare':>10}{'seal_into':>11}{'ratio':>7}"
        f"{'seal':>8}{'ratio':>7}{'bare+copy':>11}{'seal/(bare+copy)':>18}"
    )
    secret = os.urandom(32)
    aad = b"qsc.guardian.v1 batch 123456"
    aes_key = AeadKey("bench-aes", secret, Algorithm.AES_256_GCM)
    xch_key = AeadKey("bench-xchacha", secret, Algorithm.XCHACHA20_POLY1305)
    counter = CounterNonceSource.create(tmp / "bench-aes.nonce", aes_key.key_id)
    sealers = {
        Algorithm.AES_256_GCM: Sealer(aes_key, counter),  # production discipline: counters
        Algorithm.XCHACHA20_POLY1305: Sealer(xch_key),  # random 192-bit nonces
    }
    aesgcm = AESGCM(secret)
    nonce12, nonce24 = os.urandom(12), os.urandom(24)
    header = os.urandom(40)  # about our header's size, for the bare+copy reference

    def bare_fn(alg: Algorithm, data: bytes) -> Callable[[], bytes]:
        if alg is Algorithm.AES_256_GCM:
            return lambda: aesgcm.encrypt(nonce12, data, aad)
        return lambda: sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(data, aad, nonce24, secret)

    for alg, sealer in sealers.items():
        for size in (1024, 64 * 1024, MiB):
            data = os.urandom(size)
            bare = bare_fn(alg, data)
            calls = max(20, (24 * MiB) // size)
            out = bytearray(sealer.sealed_size(size))
            t = per_call(
                {
                    "bare": bare,
                    "into": functools.partial(sealer.seal_into, data, out, aad),
                    "copy": functools.partial(_prefixed, header, bare),
                    "seal": functools.partial(sealer.seal, data, aad),
                },
                calls,
            )
            mbs = {k: size / v / 1e6 for k, v in t.items()}
            print(
                f"{alg.value:<20}{size // 1024:>6}Ki{mbs['bare']:>10.0f}{mbs['into']:>11.0f}"
                f"{mbs['into'] / mbs['bare']:>7.2f}{mbs['seal']:>8.0f}"
                f"{mbs['seal'] / mbs['bare']:>7.2f}{mbs['copy']:>11.0f}"
                f"{mbs['seal'] / mbs['copy']:>18.2f}"
            )
    counter.close()
    print(
        "  seal_into = sealing into the caller's reusable buffer (the bulk path, zero-copy for\n"
        "  AES-256-GCM); seal = a new bytes object per message.\n"
        "  bare+copy = the bare call plus prepending a 40-byte header, i.e. one copy of the\n"
        "  output into a new bytes object: the cost any framing of the library's output into an\n"
        "  immutable bytes has. Beyond that copy, ours adds the nonce discipline and header."
    )


def bench_hashing(tmp: Path) -> None:
    size = 256 * MiB
    path = tmp / "hash-256MiB.bin"
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for i in range(size // MiB):
            f.write(block[i:] + block[:i])  # no two MiB alike, cheaply
    path.chmod(0o600)
    print(f"\nFile hashing, {size // MiB} MiB file in the page cache, MB/s")

    def bare_sha3() -> bytes:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha3_256").digest()

    def bare_blake3_mmap() -> bytes:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(path)
        return bytes(h.digest())

    def bare_blake3_read() -> bytes:
        h = blake3.blake3()
        buf = bytearray(MiB)
        view = memoryview(buf)
        with path.open("rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        return bytes(h.digest())

    rows: list[tuple[str, Callable[[], bytes], str, Callable[[], bytes]]] = [
        ("SHA3-256", lambda: sha3_256_file(path), "hashlib.file_digest", bare_sha3),
        ("BLAKE3", lambda: blake3_file(path), "blake3 update_mmap AUTO", bare_blake3_mmap),
        (
            "BLAKE3 (no mmap)",
            lambda: blake3_file(path, allow_mmap=False),
            "blake3 1 MiB read loop",
            bare_blake3_read,
        ),
    ]
    print(f"{'ours':<18}{'MB/s':>8}   {'bare library':<26}{'MB/s':>8}{'ratio':>8}")
    for name, ours, bare_name, bare in rows:
        assert ours() == bare()
        t = per_call({"ours": ours, "bare": bare}, calls=1, reps=3 if "SHA3" in name else 5)
        o, b = size / t["ours"] / 1e6, size / t["bare"] / 1e6
        print(f"{name:<18}{o:>8.0f}   {bare_name:<26}{b:>8.0f}{o / b:>8.2f}")
    path.unlink()


def bench_kem() -> None:
    print("\nHybrid KEM, operations per second")
    print(f"{'instance':<28}{'keygen':>10}{'encaps':>10}{'decaps':>10}")

    def show(name: str, t: dict[str, float]) -> None:
        ops = [1 / t[op] for op in ("keygen", "encaps", "decaps")]
        print(f"{name:<28}" + "".join(f"{x:>10.0f}" for x in ops))

    def row(kem: HybridKem) -> None:
        sk = kem.generate()
        pk = sk.public_key
        ct = pk.encapsulate().ciphertext
        fns = {
            "keygen": kem.generate,
            "encaps": pk.encapsulate,
            "decaps": lambda: sk.decapsulate(ct),
        }
        show(kem.name, per_call(fns, calls=300, reps=5))

    row(QSC_HYBRID_KEM)
    row(XWING)
    sk = mlkem.MLKEM1024PrivateKey.generate()
    pub = sk.public_key()
    _, ct = pub.encapsulate()
    t = per_call(
        {
            "keygen": mlkem.MLKEM1024PrivateKey.generate,
            "encaps": pub.encapsulate,
            "decaps": lambda: sk.decapsulate(ct),
        },
        calls=300,
        reps=5,
    )
    show("bare ML-KEM-1024 (reference)", t)


def main() -> int:
    t0 = time.perf_counter()
    print(f"QSC crypto benchmark - Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="qsc-bench-") as d:
        bench_sealing(Path(d))
        bench_hashing(Path(d))
    bench_kem()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
