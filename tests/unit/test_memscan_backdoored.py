"""Known-backdoored libraries (CVE-2024-3094, liblzma 5.6.0/5.6.1) found in /proc/PID/maps: the
name list and its derived generic names, the maps parser's filter on real maps text, the scanner
against a fake /proc tree (symlink resolution through the process's root, deleted libraries, an
empty list), the event and the default rules. Pure: no root, no live process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alpha.memscan import (
    DEFAULT_BACKDOORED_LIBRARIES,
    BackdooredLibraries,
    MemoryScanner,
    MemScanConfig,
    ThreatKind,
    convert,
    procfs,
)
from alpha.rules import RuleEngine
from alpha.rules.fields import lookup
from mesh.config import config_from_dict
from mesh.errors import ConfigError
from qsc.common.v1 import classification_pb2, memory_details_pb2

LIB = "/usr/lib/x86_64-linux-gnu"

# Captured from Linux 6.x (Debian 12): sshd with libsystemd and liblzma, as the loader maps them.
# The 5.6.1 lines are the 5.4.1 ones renamed (what an affected Debian sid/Fedora 40 host shows).
SSHD_MAPS = f"""\
55d0b6a4f000-55d0b6a5f000 r--p 00000000 fe:00 263561                     /usr/sbin/sshd
55d0b6a5f000-55d0b6aee000 r-xp 00010000 fe:00 263561                     /usr/sbin/sshd
55d0b6aee000-55d0b6b37000 r--p 0009f000 fe:00 263561                     /usr/sbin/sshd
55d0b7c1e000-55d0b7c3f000 rw-p 00000000 00:00 0                          [heap]
7fd5e1390000-7fd5e1394000 r--p 00000000 fe:00 339700                     {LIB}/liblzma.so.5.6.1
7fd5e1394000-7fd5e13b1000 r-xp 00004000 fe:00 339700                     {LIB}/liblzma.so.5.6.1
7fd5e13b1000-7fd5e13bd000 r--p 00021000 fe:00 339700                     {LIB}/liblzma.so.5.6.1
7fd5e13bd000-7fd5e13be000 r--p 0002d000 fe:00 339700                     {LIB}/liblzma.so.5.6.1
7fd5e13be000-7fd5e13bf000 rw-p 0002e000 fe:00 339700                     {LIB}/liblzma.so.5.6.1
7fd5e13c0000-7fd5e13c8000 r--p 00000000 fe:00 340012                     {LIB}/libsystemd.so.0.35.0
7fd5e13c8000-7fd5e1440000 r-xp 00008000 fe:00 340012                     {LIB}/libsystemd.so.0.35.0
7fd5e1600000-7fd5e1626000 r--p 00000000 fe:00 339380                     {LIB}/libc.so.6
7fd5e1626000-7fd5e177c000 r-xp 00026000 fe:00 339380                     {LIB}/libc.so.6
7ffd1c8e0000-7ffd1c901000 rw-p 00000000 00:00 0                          [stack]
7ffd1c9b6000-7ffd1c9b8000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""
BENIGN_MAPS = SSHD_MAPS.replace("liblzma.so.5.6.1", "liblzma.so.5.4.1")


def sshd_maps(lzma: str) -> str:
    return SSHD_MAPS.replace(f"{LIB}/liblzma.so.5.6.1", lzma)


# --- the name list ------------------------------------------------------------------------------


def test_default_list_is_cve_2024_3094() -> None:
    assert set(DEFAULT_BACKDOORED_LIBRARIES) == {"liblzma.so.5.6.0", "liblzma.so.5.6.1"}
    assert MemScanConfig().backdoored_libraries == DEFAULT_BACKDOORED_LIBRARIES


def test_match_by_file_name_only() -> None:
    known = BackdooredLibraries(DEFAULT_BACKDOORED_LIBRARIES)
    assert known.match(f"{LIB}/liblzma.so.5.6.1") == "liblzma.so.5.6.1"
    assert known.match("/var/lib/docker/overlay2/x/merged/lib/liblzma.so.5.6.0") == (
        "liblzma.so.5.6.0"
    )
    assert known.match(f"{LIB}/liblzma.so.5.6.1 (deleted)") == "liblzma.so.5.6.1"
    assert known.match("liblzma.so.5.6.1") == "liblzma.so.5.6.1"
    for benign in (
        f"{LIB}/liblzma.so.5.4.1",
        f"{LIB}/liblzma.so.5.6.2",
        f"{LIB}/liblzma.so.5.6.10",
        f"{LIB}/liblzma.so.5",
        "/opt/x/xliblzma.so.5.6.1",
        "/opt/liblzma.so.5.6.1/libfoo.so",
        "",
    ):
        assert known.match(benign) == "", benign


def test_generic_names_are_derived() -> None:
    known = BackdooredLibraries(["liblzma.so.5.6.1", "libbad.so"])
    assert known.generic_names == {"liblzma.so.5.6", "liblzma.so.5", "liblzma.so"}
    assert known.watched == {
        b"liblzma.so.5.6.1",
        b"liblzma.so.5.6",
        b"liblzma.so.5",
        b"liblzma.so",
        b"libbad.so",
    }
    assert known.generic(f"{LIB}/liblzma.so.5")
    assert not known.generic(f"{LIB}/liblzma.so.5 (deleted)")  # no file left to resolve
    assert not known.generic(f"{LIB}/liblzma.so.5.4.1")
    assert not BackdooredLibraries([])


def test_config_validation_and_loading() -> None:
    for bad in ("", f"{LIB}/liblzma.so.5.6.1", "..", " liblzma.so.5.6.1"):
        with pytest.raises(ConfigError, match="backdoored_libraries"):
            MemScanConfig(backdoored_libraries=(bad,))
    cfg = config_from_dict(
        MemScanConfig, {"backdoored_libraries": ["liblzma.so.5.6.1", "libfoo.so.1.2.3"]}
    )
    assert cfg.backdoored_libraries == ("liblzma.so.5.6.1", "libfoo.so.1.2.3")
    assert config_from_dict(MemScanConfig, {"backdoored_libraries": []}).backdoored_libraries == ()


# --- the maps parser ----------------------------------------------------------------------------


def files(entries: list[procfs.MapEntry]) -> list[procfs.MapEntry]:
    """Without the kernel's own pages ([vdso], [vsyscall]), which the parser always keeps."""
    return [e for e in entries if not e.kernel_special]


def test_parser_keeps_watched_libraries_on_real_maps_text() -> None:
    data = SSHD_MAPS.encode()
    # Without names: a read-only executable mapping of an existing library is never a finding.
    assert files(procfs.parse_executable_maps(data)) == []
    watched = BackdooredLibraries(DEFAULT_BACKDOORED_LIBRARIES).watched
    kept = files(procfs.parse_executable_maps(data, names=watched))
    assert [(e.start, e.end, e.perms, e.offset, e.dev, e.inode, e.path) for e in kept] == [
        (0x7FD5E1394000, 0x7FD5E13B1000, "r-xp", 0x4000, "fe:00", 339700, f"{LIB}/liblzma.so.5.6.1")
    ]
    assert files(procfs.parse_executable_maps(BENIGN_MAPS.encode(), names=watched)) == []
    generic = procfs.parse_executable_maps(sshd_maps(f"{LIB}/liblzma.so.5").encode(), names=watched)
    assert [e.path for e in files(generic)] == [f"{LIB}/liblzma.so.5"]  # kept, to be resolved


def test_reader_keeps_watched_libraries_across_chunks(tmp_path: Path) -> None:
    filler = "".join(
        f"7f00{i:08x}000-7f00{i:08x}fff r-xp 00000000 fe:00 {1000 + i} /usr/lib/libx{i}.so\n"
        for i in range(2000)  # more than one 64 KiB read
    )
    (tmp_path / "maps").write_text(filler + SSHD_MAPS)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = BackdooredLibraries(DEFAULT_BACKDOORED_LIBRARIES).watched
        entries = procfs.read_executable_maps(fd, 64 * 1024 * 1024, names=names)
    finally:
        os.close(fd)
    assert [e.path for e in files(entries)] == [f"{LIB}/liblzma.so.5.6.1"]


# --- the scanner, on a fake /proc ---------------------------------------------------------------


def make_proc(
    root: Path, pid: int, maps: str, name: str = "sshd", exe: str = "/usr/sbin/sshd"
) -> Path:
    base = root / str(pid)
    base.mkdir(parents=True)
    (base / "status").write_text(
        f"Name:\t{name}\nState:\tS (sleeping)\nTgid:\t{pid}\nPPid:\t1\nTracerPid:\t0\n"
        "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nKthread:\t0\nVmSize:\t  1000 kB\nThreads:\t1\n"
    )
    fields = ["S", "1"] + ["0"] * 17 + ["100", "0", "0"]
    (base / "stat").write_text(f"{pid} ({name}) {' '.join(fields)}\n")
    (base / "maps").write_text(maps)
    (base / "environ").write_bytes(b"PATH=/usr/bin\0")
    (base / "cmdline").write_bytes(f"{exe}\0-D\0".encode())
    (base / "cgroup").write_text("0::/system.slice/ssh.service\n")
    (base / "loginuid").write_text("4294967295")
    os.symlink(exe, base / "exe")
    os.symlink("/", base / "cwd")
    (base / "task" / str(pid)).mkdir(parents=True)
    (base / "task" / str(pid) / "status").write_text(f"Name:\t{name}\nTracerPid:\t0\n")
    return base


def scanner(proc: Path, tmp_path: Path, **kw: object) -> MemoryScanner:
    cfg = MemScanConfig(ld_so_preload=tmp_path / "none", **kw)  # type: ignore[arg-type]
    return MemoryScanner(cfg, proc=proc, boot_id="b00t")


def test_sshd_with_liblzma_5_6_1_is_one_finding(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    make_proc(proc, 100, SSHD_MAPS)
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.BACKDOORED_LIBRARY
    assert [(r.perms, r.path) for r in finding.regions] == [("r-xp", f"{LIB}/liblzma.so.5.6.1")]
    assert finding.libraries == (f"{LIB}/liblzma.so.5.6.1",)
    assert finding.process.info.comm == "sshd"
    assert ("lib", f"{LIB}/liblzma.so.5.6.1") in finding.identity


def test_benign_liblzma_and_an_empty_list_find_nothing(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    make_proc(proc, 100, BENIGN_MAPS)
    make_proc(proc, 101, SSHD_MAPS)
    assert scanner(proc, tmp_path).scan_pid(100).findings == ()
    assert scanner(proc, tmp_path, backdoored_libraries=()).scan_pid(101).findings == ()


def test_custom_list(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    make_proc(proc, 100, BENIGN_MAPS)
    found = scanner(proc, tmp_path, backdoored_libraries=("libsystemd.so.0.35.0",)).scan_pid(100)
    (finding,) = found.findings
    assert finding.libraries == (f"{LIB}/libsystemd.so.0.35.0",)


def test_deleted_backdoored_library_is_reported_as_backdoored(tmp_path: Path) -> None:
    """sshd started before the upgrade to 5.6.2 still runs the old code: one finding of this
    kind, not a (low severity) deleted library."""
    proc = tmp_path / "proc"
    make_proc(proc, 100, sshd_maps(f"{LIB}/liblzma.so.5.6.0 (deleted)"))
    (finding,) = scanner(proc, tmp_path).scan_pid(100).findings
    assert finding.kind is ThreatKind.BACKDOORED_LIBRARY
    assert finding.libraries == (f"{LIB}/liblzma.so.5.6.0 (deleted)",)
    make_proc(proc, 101, sshd_maps(f"{LIB}/liblzma.so.5.4.1 (deleted)"))
    (other,) = scanner(proc, tmp_path).scan_pid(101).findings
    assert other.kind is ThreatKind.DELETED_EXECUTABLE


@pytest.mark.parametrize(
    ("target", "found"),
    [
        ("liblzma.so.5.6.1", True),  # relative, beside it
        (f"{LIB}/liblzma.so.5.6.0", True),  # absolute
        ("liblzma.so.5.4.1", False),
        ("liblzma.so.5.6", True),  # a chain: liblzma.so.5 -> liblzma.so.5.6 -> liblzma.so.5.6.1
    ],
)
def test_generic_name_resolved_through_the_process_root(
    tmp_path: Path, target: str, found: bool
) -> None:
    """maps names the real file; should it show a generic name that is a symlink (looked up in
    the process's own root, so a container's filesystem), the link's target decides."""
    proc = tmp_path / "proc"
    base = make_proc(proc, 100, sshd_maps(f"{LIB}/liblzma.so.5"))
    root = tmp_path / "container-root"
    libdir = root / LIB.lstrip("/")
    libdir.mkdir(parents=True)
    for real in ("liblzma.so.5.6.1", "liblzma.so.5.6.0", "liblzma.so.5.4.1"):
        (libdir / real).write_bytes(b"\x7fELF")
    os.symlink("liblzma.so.5.6.1", libdir / "liblzma.so.5.6")
    os.symlink(target, libdir / "liblzma.so.5")
    os.symlink(root, base / "root")
    findings = scanner(proc, tmp_path).scan_pid(100).findings
    if not found:
        assert findings == ()
        return
    (finding,) = findings
    assert finding.kind is ThreatKind.BACKDOORED_LIBRARY
    assert [r.path for r in finding.regions] == [f"{LIB}/liblzma.so.5"]  # maps, as it was
    assert os.path.basename(finding.libraries[0]).startswith("liblzma.so.5.6.")
    assert finding.libraries[0].startswith(LIB + "/")


def test_generic_name_that_is_a_regular_file_is_not_guessed(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    base = make_proc(proc, 100, sshd_maps(f"{LIB}/liblzma.so.5"))
    libdir = tmp_path / "root" / LIB.lstrip("/")
    libdir.mkdir(parents=True)
    (libdir / "liblzma.so.5").write_bytes(b"\x7fELF")
    os.symlink(tmp_path / "root", base / "root")
    assert scanner(proc, tmp_path).scan_pid(100).findings == ()
    base2 = make_proc(proc, 101, sshd_maps(f"{LIB}/liblzma.so.5"))  # no root link readable
    assert base2.exists()
    assert scanner(proc, tmp_path).scan_pid(101).findings == ()


# --- the event and the default rules ------------------------------------------------------------


def test_event_fields_and_default_rules(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    make_proc(proc, 100, SSHD_MAPS)
    make_proc(proc, 101, SSHD_MAPS, name="xz", exe="/usr/bin/xz")
    make_proc(proc, 102, BENIGN_MAPS)
    scan = scanner(proc, tmp_path)
    engine = RuleEngine.default()
    (sshd,) = scan.scan_pid(100).findings
    event = convert.finding_to_event(sshd)
    assert event.memory_threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_BACKDOORED_LIBRARY
    assert event.severity == classification_pb2.SEVERITY_HIGH
    assert event.summary == (
        f"known backdoored library in sshd (pid 100, exe /usr/sbin/sshd): {LIB}/liblzma.so.5.6.1"
    )
    assert lookup("mem.kind").extract(event) == "backdoored_library"  # type: ignore[union-attr]
    assert lookup("mem.paths").extract(event) == (f"{LIB}/liblzma.so.5.6.1",)  # type: ignore[union-attr]
    (match,) = engine.evaluate(event)
    assert match.rule_id == "alpha.backdoored_library_sshd"
    assert match.severity == classification_pb2.SEVERITY_HIGH
    assert {t.id for t in match.rule.techniques} == {"T1195.002", "T1556"}
    (xz,) = scan.scan_pid(101).findings
    (other,) = engine.evaluate(convert.finding_to_event(xz))
    assert other.rule_id == "alpha.backdoored_library"
    assert other.severity == classification_pb2.SEVERITY_MEDIUM
    assert scan.scan_pid(102).findings == ()
    proto = convert.finding_to_proto(sshd)
    assert proto.threat.regions[0].path == f"{LIB}/liblzma.so.5.6.1"
