"""The /proc parsers of the memory scan, on captured samples (tricky lines included), and the
readers' race handling. Pure: no root, no live process besides this one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alpha.memscan import procfs
from alpha.memscan.procfs import ExeLink, ProcessGone

# Captured from Linux 6.x (addresses shortened where long), plus hand-made tricky lines.
MAPS = """\
5645606e3000-5645606e5000 r--p 00000000 fe:00 260131                     /usr/bin/cat
5645606e5000-5645606ea000 r-xp 00002000 fe:00 260131                     /usr/bin/cat
56459a329000-56459a34a000 rw-p 00000000 00:00 0                          [heap]
7fe30d52d000-7fe30d54f000 rw-p 00000000 00:00 0{SP}
7fe30d5d8000-7fe30d72e000 r-xp 00026000 fe:00 339380 /usr/lib/x86_64-linux-gnu/libc.so.6
7f434f7c3000-7f434f7ff000 rwxp 00000000 00:00 0{SP}
7f4350000000-7f4350001000 r-xp 00000000 00:00 0                          [anon:jit code]
7f4351000000-7f4351002000 r-xp 00001000 fe:00 4242                       /opt/my app/lib x.so
7f4352000000-7f4352001000 r-xp 00000000 fe:00 4243                       /tmp/evil.so (deleted)
7f4353000000-7f4353001000 r-xp 00000000 00:01 1045                       /memfd:payload (deleted)
7f4354000000-7f4354001000 rwxs 00000000 00:01 2048                       /dev/zero (deleted)
7f4355000000-7f4355001000 r-xp 00000000 fe:00 4244                       /tmp/odd\\012name
7ffd1c8e0000-7ffd1c901000 rw-p 00000000 00:00 0                          [stack]
7fd575e23000-7fd575e25000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
""".replace("{SP}", " ")  # anonymous lines end in a space, as the kernel prints them

STATUS = """\
Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Ngid:\t0
Pid:\t4242
PPid:\t4200
TracerPid:\t4300
Uid:\t1000\t1000\t1000\t1000
Gid:\t100\t101\t100\t100
FDSize:\t64
Groups:\t100
Kthread:\t0
VmPeak:\t   10000 kB
VmSize:\t   10000 kB
Threads:\t3
SigQ:\t0/96365
"""

KTHREAD_STATUS = """\
Name:\tkworker/0:1
State:\tI (idle)
Tgid:\t17
PPid:\t2
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
Threads:\t1
"""


def test_maps_line_fields_and_tricky_paths() -> None:
    entries = procfs.parse_maps(MAPS)
    assert len(entries) == 15  # the garbage line is dropped
    by_path = {e.path: e for e in entries}
    spaced = by_path["/opt/my app/lib x.so"]
    assert (spaced.start, spaced.end, spaced.offset, spaced.inode) == (
        0x7F4351000000,
        0x7F4351002000,
        0x1000,
        4242,
    )
    assert spaced.executable
    assert not spaced.writable
    assert not spaced.anonymous
    assert by_path["/tmp/evil.so (deleted)"].deleted
    assert by_path["/tmp/odd\nname"].inode == 4244  # \012 is the kernel's escape of a newline
    anon = next(e for e in entries if e.perms == "rwxp")
    assert anon.path == ""
    assert anon.anonymous
    assert anon.writable
    assert by_path["[anon:jit code]"].anonymous
    assert by_path["/memfd:payload (deleted)"].anonymous
    assert by_path["/memfd:payload (deleted)"].memfd
    assert by_path["/dev/zero (deleted)"].anonymous  # shared anonymous memory
    for special in ("[vdso]", "[vsyscall]"):
        assert by_path[special].kernel_special
        assert not by_path[special].anonymous
    assert by_path["[stack]"].anonymous
    assert not by_path["[stack]"].executable


def test_parse_executable_maps_keeps_only_what_can_be_a_finding() -> None:
    data = MAPS.encode()
    interesting = {e.path for e in procfs.parse_executable_maps(data)}
    assert interesting == {
        "",  # the rwx anonymous mapping
        "[anon:jit code]",
        "/tmp/evil.so (deleted)",
        "/memfd:payload (deleted)",
        "/dev/zero (deleted)",
        "[vdso]",
        "[vsyscall]",
    }
    every = procfs.parse_executable_maps(data, every=True)
    assert {e.path for e in every} >= {"/usr/bin/cat", "/opt/my app/lib x.so", "/tmp/odd\nname"}
    assert all(e.executable for e in every)
    assert every == [e for e in procfs.parse_maps(MAPS) if e.executable]


def test_parse_executable_maps_is_not_fooled_by_paths() -> None:
    # A non-executable line whose path looks like an executable perms field, twice.
    line = b"7f0000000000-7f0000001000 r--p 00000000 fe:00 7 /tmp/x xp 00000000 rwxp 00000000 y\n"
    assert procfs.parse_executable_maps(line, every=True) == []
    exec_line = b"7f0000000000-7f0000001000 rwxp 00000000 fe:00 7 /tmp/a xp 00000000 b\n"
    found = procfs.parse_executable_maps(line + exec_line)
    assert len(found) == 1
    assert found[0].path == "/tmp/a xp 00000000 b"
    # No trailing newline on the last line.
    assert procfs.parse_executable_maps(b"1000-2000 rwxp 00000000 00:00 0")[0].path == ""


def test_status() -> None:
    st = procfs.parse_status(STATUS)
    assert (st.name, st.state, st.tgid, st.ppid, st.tracer_pid) == (
        "python3",
        "S",
        4242,
        4200,
        4300,
    )
    assert st.uids == (1000, 1000, 1000, 1000)
    assert st.gids == (100, 101, 100, 100)
    assert st.threads == 3
    assert st.has_mm
    assert not st.kernel_thread
    assert not st.zombie
    kt = procfs.parse_status(KTHREAD_STATUS)  # an older kernel: no Kthread line, no Vm lines
    assert kt.kernel_thread
    assert kt.name == "kworker/0:1"
    assert procfs.parse_status(KTHREAD_STATUS + "Kthread:\t1\n").kthread
    exiting = procfs.parse_status(KTHREAD_STATUS + "Kthread:\t0\n")  # memory already released
    assert not exiting.kernel_thread
    assert not exiting.has_mm
    zombie = procfs.parse_status(KTHREAD_STATUS.replace("I (idle)", "Z (zombie)"))
    assert zombie.zombie
    assert not zombie.kernel_thread
    assert (
        procfs.parse_status("Name:\ta b  \nTgid:\t1\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n").name
        == "a b  "
    )
    with pytest.raises(ValueError, match="Uid"):
        procfs.parse_status("Name:\tx\nTgid:\t1\n")
    with pytest.raises(ValueError, match="4 ids"):
        procfs.parse_status(STATUS.replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000"))
    assert procfs.parse_tracer_pid(STATUS) == 4300
    assert procfs.parse_tracer_pid("Name:\tx\n") == 0


def test_environ_preload() -> None:
    env = b"PATH=/usr/bin\0LD_PRELOAD=/lib/a.so:/lib/b.so /lib/c.so\0HOME=/root\0"
    assert procfs.preload_from_environ(env) == ("/lib/a.so", "/lib/b.so", "/lib/c.so")
    # Repeated variables all count; empty values and look-alikes do not.
    env2 = b"LD_PRELOAD=/lib/a.so\0XLD_PRELOAD=/x.so\0LD_PRELOAD=\0LD_PRELOAD=/lib/d.so\0"
    assert procfs.preload_from_environ(env2) == ("/lib/a.so", "/lib/d.so")
    assert procfs.preload_from_environ(b"LD_PRELOAD=/lib/trunc") == ("/lib/trunc",)
    assert procfs.preload_from_environ(b"") == ()


def test_ld_so_preload() -> None:
    text = "# a comment\n/usr/lib/libhook.so  /lib/other.so:libbare.so\n\n/usr/lib/libhook.so\n"
    assert procfs.parse_ld_so_preload(text) == (
        "/usr/lib/libhook.so",
        "/lib/other.so",
        "libbare.so",
    )
    assert procfs.parse_ld_so_preload("") == ()


def test_exe_link() -> None:
    memfd = ExeLink("/memfd:payload (deleted)")
    assert memfd.memfd
    assert not memfd.deleted
    assert memfd.memfd_name == "payload"
    gone = ExeLink("/tmp/x y (deleted)")
    assert gone.deleted
    assert not gone.memfd
    assert gone.path == "/tmp/x y"
    plain = ExeLink("/usr/bin/sleep")
    assert not plain.deleted
    assert not plain.memfd
    assert plain.path == "/usr/bin/sleep"


def test_stat_start() -> None:
    fields = ["S", "77"] + ["0"] * 17 + ["123456", "0"]
    comm, ppid, start = procfs.parse_stat_start(f"42 (a) b (c)) {' '.join(fields)}\n")
    assert (comm, ppid, start) == ("a) b (c)", 77, 123456)


def test_readers_on_this_process_and_races(tmp_path: Path) -> None:
    dirfd = procfs.open_pid_dir(Path("/proc"), os.getpid())
    try:
        maps = procfs.read_executable_maps(dirfd, 1 << 26, every=True)
        assert os.path.realpath("/proc/self/exe") in {e.path for e in maps}  # its own text
        st = procfs.parse_status(procfs.read_small(dirfd, "status").decode())
        assert st.tgid == os.getpid()
        assert procfs.readlink_at(dirfd, "exe") == os.path.realpath("/proc/self/exe")
        with pytest.raises(ProcessGone):
            procfs.read_small(dirfd, "no-such-file")
    finally:
        os.close(dirfd)
    with pytest.raises(ProcessGone):
        procfs.open_pid_dir(tmp_path, 999999)
    (tmp_path / "12").mkdir()
    (tmp_path / "self").mkdir()
    (tmp_path / "3").mkdir()
    assert procfs.list_pids(tmp_path) == [3, 12]


def test_pid_dir_pins_the_process() -> None:
    """After the process exits, reads through its directory fail as gone: a reused pid can never
    be read as the old process."""
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        dirfd = procfs.open_pid_dir(Path("/proc"), child.pid)
    finally:
        child.kill()
        child.wait()
    try:
        with pytest.raises(ProcessGone):
            procfs.read_small(dirfd, "status")
        with pytest.raises(ProcessGone):
            procfs.readlink_at(dirfd, "exe")
    finally:
        os.close(dirfd)
