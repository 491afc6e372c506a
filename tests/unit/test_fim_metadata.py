"""Observing files: metadata from one fd, xattrs, symlinks, hashing in bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from beta.fim import metadata
from beta.fim.metadata import (
    VOLATILE_FIELDS,
    FileType,
    MetaField,
    diff_metadata,
    hash_prefix,
    observe,
)

ROOT = os.geteuid() == 0


def test_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    os.chmod(f, 0o640)
    obs = observe(str(f))
    assert obs is not None
    assert obs.meta.file_type is FileType.REGULAR
    assert obs.meta.mode == 0o640
    assert obs.meta.size == 5
    assert obs.meta.inode == os.lstat(f).st_ino
    assert obs.blake3 == blake3.blake3(b"hello").digest()
    assert obs.error is None


def test_prefix_hash_in_the_same_pass(tmp_path: Path) -> None:
    f = tmp_path / "log"
    data = os.urandom(3 * 1024 * 1024 + 17)
    f.write_bytes(data)
    cut = 2 * 1024 * 1024 + 5  # inside the third chunk
    obs = observe(str(f), prefix_len=cut)
    assert obs is not None
    assert obs.prefix_blake3 == blake3.blake3(data[:cut]).digest()
    assert obs.blake3 == blake3.blake3(data).digest()
    assert hash_prefix(str(f), cut) == obs.prefix_blake3
    assert hash_prefix(str(f), len(data) + 1) is None  # shorter than asked
    assert observe(str(f), prefix_len=0) is not None


def test_symlink_is_recorded_not_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("t")
    link = tmp_path / "link"
    link.symlink_to("target")
    obs = observe(str(link))
    assert obs is not None
    assert obs.meta.file_type is FileType.SYMLINK
    assert obs.meta.symlink_target == "target"
    assert obs.blake3 is None


def test_directory_fifo_and_missing(tmp_path: Path) -> None:
    d = observe(str(tmp_path))
    assert d is not None
    assert d.meta.file_type is FileType.DIRECTORY
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    obs = observe(str(fifo))  # must not block on open
    assert obs is not None
    assert obs.meta.file_type is FileType.OTHER
    assert observe(str(tmp_path / "nope")) is None
    assert observe(str(tmp_path / "nope" / "deeper")) is None


def test_user_xattrs_and_capabilities(tmp_path: Path) -> None:
    f = tmp_path / "bin"
    f.write_bytes(b"\x7fELF")
    try:
        os.setxattr(f, "user.origin", b"pkg")
    except OSError:
        pytest.skip("filesystem without user xattrs")
    before = observe(str(f))
    assert before is not None
    assert before.meta.xattr("user.origin") == b"pkg"
    if not ROOT:
        pytest.skip("security.capability needs root")
    if shutil.which("setcap"):
        subprocess.run(["setcap", "cap_net_raw+ep", str(f)], check=True)
    else:
        # VFS_CAP_REVISION_2 with CAP_NET_RAW (bit 13) permitted and effective.
        cap = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
        os.setxattr(f, "security.capability", cap)
    after = observe(str(f))
    assert after is not None
    assert after.meta.capabilities
    fields = diff_metadata(before.meta, after.meta)
    assert MetaField.CAPABILITIES in fields
    assert MetaField.XATTRS not in fields  # the user.* attributes did not change


def test_diff_names_each_field(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("a")
    a = observe(str(f))
    os.chmod(f, 0o600)
    if ROOT:
        os.chown(f, 1234, 4321)
    b = observe(str(f))
    assert a is not None
    assert b is not None
    fields = set(diff_metadata(a.meta, b.meta))
    assert MetaField.MODE in fields
    assert MetaField.CTIME in fields
    if ROOT:
        assert {MetaField.UID, MetaField.GID} <= fields
    assert MetaField.INODE not in fields
    assert MetaField.CTIME in VOLATILE_FIELDS


def test_unreadable_content_is_an_observation_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "secret"
    f.write_text("s")

    def refuse(path: str) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(metadata, "_open_noatime", refuse)
    obs = observe(str(f))
    assert obs is not None
    assert obs.blake3 is None
    assert obs.error == "cannot open: Permission denied"
    assert obs.meta.size == 1  # metadata still known from lstat


def test_metered_reads_call_back_per_chunk(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"\1" * (2 * 1024 * 1024 + 1))
    seen: list[int] = []
    obs = observe(str(f), on_bytes=seen.append)
    assert obs is not None
    assert sum(seen) == f.stat().st_size
    assert len(seen) == 3


_MEMORY_PROBE = r"""
import json, sys
from beta.fim.config import FimConfig, WatchPath
from beta.fim.scanner import Scanner
from pathlib import Path

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

root = Path(sys.argv[1])
scanner = Scanner(FimConfig(paths=(WatchPath(root),), baseline=Path("/nonexistent/b.qsc")))
before = hwm_kib()
report = scanner.snapshot()
after = hwm_kib()
entry = report.entries[str(root / "huge")]
print(json.dumps({
    "growth_kib": after - before,
    "size": entry.meta.size,
    "hash": entry.blake3.hex(),
    "bytes": report.bytes,
}))
"""


@pytest.mark.slow
def test_multi_gib_file_is_hashed_in_bounded_memory(tmp_path: Path) -> None:
    huge = tmp_path / "tree" / "huge"
    huge.parent.mkdir()
    size = 3 * 1024**3
    subprocess.run(["truncate", "-s", str(size), str(huge)], check=True)
    head, tail = os.urandom(1024 * 1024), os.urandom(4096)
    with huge.open("r+b") as f:  # some real data at both ends, holes in between
        f.write(head)
        f.seek(size - len(tail))
        f.write(tail)
    # The expected hash, computed from memory without reading the file.
    expected = blake3.blake3(head)
    zeros = bytes(8 * 1024 * 1024)
    left = size - len(head) - len(tail)
    while left:
        n = min(left, len(zeros))
        expected.update(zeros[:n])
        left -= n
    expected.update(tail)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{repo / 'proto'}"}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(huge.parent)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    result = json.loads(out.stdout)
    assert result["size"] == size
    assert result["bytes"] == size
    assert result["hash"] == expected.hexdigest()
    # 3 GiB hashed; the process grew by a few chunk buffers at most.
    assert result["growth_kib"] < 32 * 1024, result
