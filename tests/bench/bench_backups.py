"""Backup verification benchmark: full-verify throughput against bare SHA3-256, structural files/s.

Run: ``.venv/bin/python tests/bench/bench_backups.py`` (``make bench``). Not a test: it prints
figures and asserts nothing. The data is written just before it is read, so it is served from the
page cache: the figures are hashing cost, not disk speed. Medians of a few runs; about a minute
on 2 vCPUs. ``--gib N`` changes the size of the large set (default 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from beta.backups import VerifyDepth, create_manifest, verify_backup_set
from beta.backups.sealedfile import seal_file
from crypto.aead import AeadKey, Algorithm, Sealer
from crypto.hashing import sha3_256_file
from crypto.keyring import KeyManager
from crypto.nonces import RandomNonceSource

MiB = 1024 * 1024
MB = 1e6


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median wall seconds of `reps` runs."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sane(ok: bool) -> None:
    """A figure for a run that did not pass would be meaningless: stop."""
    if not ok:
        raise SystemExit("bench_backups: a verification of intact data failed")


def make_large_set(root: Path, total: int, files: int) -> int:
    root.mkdir()
    block = os.urandom(MiB)
    size = total // files
    for i in range(files):
        with open(root / f"part-{i:03}.bin", "wb") as f:
            for _ in range(size // MiB):
                f.write(block)
    return size * files


def make_small_set(root: Path, files: int) -> None:
    for i in range(files):
        d = root / f"d{i // 500:03}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05}").write_bytes(os.urandom(1024))


def bench_large(tmp: Path, km: KeyManager, gib: float) -> None:
    root = tmp / "large"
    nbytes = make_large_set(root, int(gib * 1024 * MiB), 16)
    manifest = tmp / "large.manifest"
    files = sorted(root.iterdir())
    workers = min(4, os.cpu_count() or 1)
    print(f"\nLarge set: {nbytes / MiB:.0f} MiB in {len(files)} files, {workers} hashing threads")

    t = timed(lambda: create_manifest(root, manifest, km, backup_set="b", overwrite=True), 1)
    print(f"  manifest create                     {nbytes / t / MB:8.0f} MB/s")

    bare = timed(lambda: [sha3_256_file(f) for f in files], 2)
    print(f"  bare sha3_256_file, 1 thread        {nbytes / bare / MB:8.0f} MB/s  (baseline)")

    def full(n: int) -> Callable[[], object]:
        def run() -> None:
            r = verify_backup_set(root, manifest, km, depth=VerifyDepth.FULL, workers=n)
            sane(r.passed and r.bytes_checked == nbytes)

        return run

    one = timed(full(1), 2)
    print(
        f"  full verify, 1 thread               {nbytes / one / MB:8.0f} MB/s"
        f"  ({bare / one:.2f}x bare)"
    )
    many = timed(full(workers), 2)
    print(
        f"  full verify, {workers} threads              {nbytes / many / MB:8.0f} MB/s"
        f"  ({bare / many:.2f}x bare)"
    )


def bench_encrypted(tmp: Path, km: KeyManager) -> None:
    plain, root = tmp / "plain", tmp / "sealed"
    nbytes = make_large_set(plain, 256 * MiB, 8)
    root.mkdir()
    key = AeadKey("bench/1", os.urandom(32), Algorithm.AES_256_GCM)
    sealer = Sealer(key, RandomNonceSource.aes_gcm())
    for f in sorted(plain.iterdir()):
        seal_file(f, root / f.name, sealer)
    manifest = tmp / "sealed.manifest"
    create_manifest(root, manifest, km, backup_set="e", encrypted=True)
    stored = sum(f.stat().st_size for f in root.iterdir())

    def run() -> None:
        r = verify_backup_set(root, manifest, km, decryption_keys={key.key_id: key})
        sane(r.passed)

    t = timed(run, 2)
    print(f"\nEncrypted set: {nbytes / MiB:.0f} MiB sealed (AES-256-GCM, 1 MiB chunks)")
    print(f"  full verify + decrypt every chunk   {stored / t / MB:8.0f} MB/s")


def bench_small(tmp: Path, km: KeyManager, files: int) -> None:
    root = tmp / "small"
    make_small_set(root, files)
    manifest = tmp / "small.manifest"
    t = timed(lambda: create_manifest(root, manifest, km, backup_set="s", overwrite=True), 1)
    print(f"\nSmall set: {files} files of 1 KiB in {files // 500} directories")
    print(f"  manifest create                     {files / t:8.0f} files/s")

    def structural() -> None:
        sane(verify_backup_set(root, manifest, km, depth=VerifyDepth.STRUCTURAL).passed)

    def full() -> None:
        sane(verify_backup_set(root, manifest, km, depth=VerifyDepth.FULL).passed)

    print(f"  structural verify                   {files / timed(structural, 3):8.0f} files/s")
    print(f"  full verify                         {files / timed(full, 3):8.0f} files/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large set in GiB")
    parser.add_argument("--small-files", type=int, default=10_000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qsc-bench-backups-") as d:
        tmp = Path(d)
        km = KeyManager.create(tmp / "keys", "beta")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, data in {tmp}")
        bench_large(tmp, km, args.gib)
        bench_encrypted(tmp, km)
        bench_small(tmp, km, args.small_files)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
