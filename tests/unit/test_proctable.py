"""The process table against a fake /proc, cgroup/container parsing, and the delivery queue.
Pure: no root, no kernel."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from alpha.sensors.model import (
    Delivery,
    ExitDetail,
    Kind,
    Observation,
    SensorConfig,
    Stdio,
)
from alpha.sensors.proctable import (
    CgroupResolver,
    ProcessTable,
    cgroup_path,
    container_of,
    fd_kind,
    find_cgroup2_mount,
    make_exec_id,
    parse_cgroup_file,
    parse_inet_table,
    parse_stat,
    parse_status_ids,
    read_snapshot,
)

HEX = "0123456789abcdef" * 4


def make_proc(
    root: Path,
    pid: int,
    ppid: int,
    comm: str,
    *,
    start: int = 100,
    exe: str | None = None,
    args: tuple[str, ...] = (),
    cgroup: str = "0::/\n",
    uids: tuple[int, int] = (0, 0),
    fds: dict[int, str] | None = None,
) -> None:
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start), "0", "0"]
    (base / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (base / "status").write_text(
        f"Name:\t{comm}\nUid:\t{uids[0]}\t{uids[1]}\t{uids[1]}\t{uids[1]}\nGid:\t5\t5\t5\t5\n"
    )
    (base / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in args))
    (base / "cgroup").write_text(cgroup)
    os.symlink(exe or f"/usr/bin/{comm}", base / "exe")
    os.symlink("/", base / "cwd")
    for fd, target in (fds or {}).items():
        os.symlink(target, base / "fd" / str(fd))


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    make_proc(root, 1, 0, "systemd", start=1, args=("/sbin/init",))
    make_proc(root, 100, 1, "sshd", start=50, args=("sshd", "-D"))
    make_proc(
        root,
        200,
        100,
        "bash",
        start=60,
        args=("-bash",),
        uids=(1000, 1000),
        fds={0: "/dev/pts/0", 1: "socket:[99]", 2: "socket:[77]"},
        cgroup=f"0::/system.slice/docker-{HEX}.scope\n",
    )
    net = root / "200" / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when ... inode\n"
    (net / "tcp").write_text(
        header + "   0: 0100007F:A1B2 0100007F:115C 01 00000000:00000000 00:00000000 0 0 0 99 1 0\n"
    )
    (net / "tcp6").write_text(header)
    (net / "unix").write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00000000 0001 03 77 /run/systemd/journal/stdout\n"
    )
    (root / "self").mkdir()
    (root / "sys/kernel/random").mkdir(parents=True)
    (root / "sys/kernel/random/boot_id").write_text("b00t\n")
    return root


# --- ids and parsing ----------------------------------------------------------------------------


def test_exec_id_is_stable_unique_and_opaque() -> None:
    a = make_exec_id("boot-a", 42, 1_000)
    assert a == make_exec_id("boot-a", 42, 1_000)
    assert len(a) == 32
    assert int(a, 16) >= 0
    others = {
        make_exec_id("boot-b", 42, 1_000),  # another boot or host
        make_exec_id("boot-a", 43, 1_000),  # another pid
        make_exec_id("boot-a", 42, 1_001),  # the same pid later (exec or reuse)
    }
    assert a not in others
    assert len(others) == 3


def test_parse_stat_with_hostile_comm() -> None:
    text = "77 (a) (b) c) R 5 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0"
    assert parse_stat(text) == ("a) (b) c", 5, 12345)


def test_parse_status_ids() -> None:
    assert parse_status_ids("Uid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n") == (1000, 100, 0)


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([f"/system.slice/docker-{HEX}.scope"], ("docker", HEX)),
        ([f"/docker/{HEX}"], ("docker", HEX)),
        (
            [f"/kubepods.slice/kubepods-besteffort.slice/cri-containerd-{HEX}.scope"],
            ("kubernetes", HEX),
        ),
        ([f"/system.slice/cri-containerd-{HEX}.scope"], ("containerd", HEX)),
        ([f"/kubepods/besteffort/pod1234/{HEX}"], ("kubernetes", HEX)),
        ([f"/machine.slice/crio-{HEX}.scope"], ("crio", HEX)),
        ([f"/machine.slice/libpod-{HEX}.scope/container"], ("podman", HEX)),
        ([f"/machine.slice/libpod-conmon-{HEX}.scope"], ("", "")),  # the monitor, not it
        (["/lxc.payload.web1"], ("lxc", "web1")),
        (["/lxc/web2"], ("lxc", "web2")),
        (["/user.slice/user-1000.slice/session-3.scope"], ("", "")),
        (["/", "/process_api/07bd09617ad0b24edf693635b4ca222a"], ("", "")),
        ([], ("", "")),
    ],
)
def test_container_of(paths: list[str], expected: tuple[str, str]) -> None:
    assert container_of(paths) == expected


def test_cgroup_path_v2_and_hybrid() -> None:
    v2 = parse_cgroup_file("0::/system.slice/ssh.service\n")
    assert cgroup_path(v2) == "/system.slice/ssh.service"
    hybrid = parse_cgroup_file(
        "12:memory:/docker/abc\n1:name=systemd:/system.slice/docker.service\n0::/\n"
    )
    assert cgroup_path(hybrid) == "/system.slice/docker.service"  # name=systemd first
    assert cgroup_path(parse_cgroup_file("0::/\n")) == "/"
    assert cgroup_path([]) == ""


def test_find_cgroup2_mount() -> None:
    info = (
        "25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n"
        "35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
    )
    assert find_cgroup2_mount(info) == "/sys/fs/cgroup/unified"
    assert find_cgroup2_mount("25 30 0:22 / /x rw - ext4 /dev/sda rw\n") is None


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("socket:[123]", "socket"),
        ("pipe:[5]", "pipe"),
        ("/dev/pts/3", "tty"),
        ("/dev/tty1", "tty"),
        ("/dev/null", "other"),
        ("anon_inode:[eventfd]", "other"),
        ("/var/log/x.log", "file"),
        (None, "closed"),
    ],
)
def test_fd_kind(target: str | None, kind: str) -> None:
    assert fd_kind(target) == kind


def test_read_snapshot(proc: Path) -> None:
    snap = read_snapshot(200, proc)
    assert snap is not None
    assert (snap.pid, snap.ppid, snap.comm, snap.exe) == (200, 100, "bash", "/usr/bin/bash")
    assert (snap.uid, snap.gid, snap.euid, snap.args) == (1000, 5, 1000, ("-bash",))
    assert snap.stdio == (
        Stdio("tty", "/dev/pts/0"),
        Stdio("inet_socket", "", "127.0.0.1", 4444),
        Stdio("unix_socket", "/run/systemd/journal/stdout"),
    )
    assert snap.start_ns == 60 * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert read_snapshot(9999, proc) is None


def test_parse_inet_table_v4_and_v6() -> None:
    v4 = (
        "  sl  local_address rem_address   st ...\n"
        "   0: 0100007F:1F90 0A01020A:C350 01 00000000:00000000 00:00000000 00000000 0 0 4242 1\n"
    )
    assert parse_inet_table(v4) == {4242: ("10.2.1.10", 50000)}
    # ::ffff:127.0.0.1 and 2001:db8::1 as the kernel prints them (host-order 32-bit words).
    v6 = (
        "  sl  local_address                         remote_address ...\n"
        "   0: 00000000000000000000000000000000:0016 "
        "B80D0120000000000000000001000000:01BB 01 0:0 0:0 0 0 0 7 1\n"
        "   1: 00000000000000000000000000000000:0016 "
        "0000000000000000FFFF00000100007F:0050 01 0:0 0:0 0 0 0 8 1\n"
        "garbage\n"
    )
    assert parse_inet_table(v6) == {7: ("2001:db8::1", 443), 8: ("127.0.0.1", 80)}


# --- the table ----------------------------------------------------------------------------------


def test_seed_links_parents_and_ancestry(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc, ancestry_depth=8)
    assert table.seed() == 3
    init, sshd, bash = (table.info(p) for p in (1, 100, 200))
    assert init is not None
    assert sshd is not None
    assert bash is not None
    assert init.parent_exec_id == ""
    assert sshd.parent_exec_id == init.exec_id
    assert bash.parent_exec_id == sshd.exec_id
    assert [a.pid for a in bash.ancestry] == [100, 1]
    assert bash.ancestry[0].exec_id == sshd.exec_id
    assert bash.ancestry[0].comm == "sshd"
    assert bash.exec_id == make_exec_id("b00t", 200, bash.start_boot_ns)
    assert (bash.container_runtime, bash.container_id) == ("docker", HEX)
    assert bash.cgroup == f"/system.slice/docker-{HEX}.scope"


def test_fork_exec_exit(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc)
    table.seed()
    bash = table.info(200)
    assert bash is not None
    child = table.fork(200, 300, boot_ns=7_000)
    assert child is not None
    assert child.exec_id == make_exec_id("b00t", 300, 7_000)
    assert (child.ppid, child.parent_exec_id, child.exe) == (200, bash.exec_id, bash.exe)
    assert child.ancestry[0].pid == 200
    # bash execs something else before its child execs: the child keeps its fork-time parent.
    table.exec(200, 7_500, filename="/usr/bin/zsh", args=("zsh",), uid=0, gid=0, comm="zsh")
    info, snap = table.exec(
        300, 8_000, filename="/usr/bin/curl", args=("curl", "x"), uid=1, gid=2, comm="curl"
    )
    assert snap is None  # no /proc/300: the kernel's facts alone
    assert info.exec_id == make_exec_id("b00t", 300, 8_000) != child.exec_id
    assert info.parent_exec_id == bash.exec_id
    assert [a.exec_id for a in info.ancestry][:1] == [bash.exec_id]
    assert (info.exe, info.args, info.uid, info.gid, info.euid) == (
        "/usr/bin/curl",
        ("curl", "x"),
        1,
        2,
        None,
    )
    assert table.exit(300) == info
    assert 300 not in table
    assert table.exit(300) is None


def test_exec_reads_proc_when_alive(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc)
    table.seed()
    info, snap = table.exec(200, 9_000, filename="/bin/sh", args=None, uid=0, gid=0, comm="sh")
    assert snap is not None
    assert [s.kind for s in snap.stdio] == ["tty", "inet_socket", "unix_socket"]
    assert info.exe == "/usr/bin/bash"  # /proc/PID/exe beats the exec'd name
    assert info.args == ("-bash",)  # unknown args come from /proc
    assert info.euid == 1000


def test_unknown_pid_is_loaded_lazily_and_gone_is_none(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc)
    assert 100 not in table
    info = table.info(100)
    assert info is not None
    assert info.comm == "sshd"
    assert table.info(4321) is None
    assert table.fork(4321, 4322, 1) is None


def test_ancestry_is_bounded(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc, ancestry_depth=2)
    table.seed()
    pid = 200
    for child in range(1000, 1005):
        table.fork(pid, child, child)
        pid = child
    info = table.info(pid)
    assert info is not None
    assert [a.pid for a in info.ancestry] == [1003, 1002]


def test_sweep_forgets_dead_processes(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc, max_entries=4)
    table.seed()
    for child in range(500, 503):
        table.fork(1, child, child)  # never exits as far as we know; /proc/<child> missing
    assert len(table) <= 4
    assert 200 in table  # alive in /proc: kept


def test_setids(proc: Path) -> None:
    table = ProcessTable("b00t", proc=proc)
    table.seed()
    table.set_ids(200, None, 0)
    info = table.info(200)
    assert info is not None
    assert (info.uid, info.euid) == (1000, 0)


def test_cgroup_move_is_seen_through_kernel_id(proc: Path, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "qsc-test" / f"docker-{HEX}.scope").mkdir(parents=True)
    resolver = CgroupResolver(root, rescan_s=0)
    moved_id = (root / "qsc-test" / f"docker-{HEX}.scope").stat().st_ino
    assert resolver.resolve(moved_id) == f"/qsc-test/docker-{HEX}.scope"
    assert resolver.resolve(root.stat().st_ino) == "/"
    assert resolver.resolve(0) is None
    assert CgroupResolver(None).resolve(moved_id) is None
    table = ProcessTable("b00t", proc=proc, cgroups=resolver)
    table.seed()
    first = table.info(100, cgroup_id=root.stat().st_ino)  # first sight: /proc's answer stays
    assert first is not None
    assert first.container_id == ""
    info = table.info(100, cgroup_id=moved_id)
    assert info is not None
    assert info.cgroup == f"/qsc-test/docker-{HEX}.scope"
    assert (info.container_runtime, info.container_id) == ("docker", HEX)


def test_resolver_rescans_for_new_cgroups(tmp_path: Path) -> None:
    resolver = CgroupResolver(tmp_path, rescan_s=0)
    assert resolver.resolve(1) is None
    (tmp_path / "late").mkdir()
    assert resolver.resolve((tmp_path / "late").stat().st_ino) == "/late"


# --- delivery -----------------------------------------------------------------------------------


def obs(i: int, kind: Kind = Kind.EXIT) -> Observation:
    return Observation(
        kind=kind,
        time_ns=i,
        boot_ns=i,
        pid=i,
        tid=i,
        ppid=0,
        uid=0,
        gid=0,
        euid=None,
        comm="x",
        syscall="",
        ret=None,
        process=None,
        detail=ExitDetail(0),
        source="ebpf",
    )


def test_queue_overflow_drops_whole_batches_and_counts() -> None:
    delivery = Delivery(max_events=5)
    delivery.deliver([obs(1), obs(2), obs(3)])
    delivery.deliver([obs(4), obs(5), obs(6)])  # would make 6 > 5: dropped
    delivery.deliver([obs(7), obs(8)])
    assert delivery.dropped == 3
    got = delivery.take(timeout=0)
    assert [o.pid for o in got] == [1, 2, 3, 7, 8]
    assert delivery.total == 8  # seen by the sensor, whether kept or dropped
    stats = delivery.stats(started_ns=1)
    assert stats.events_total == 8
    assert stats.last_event_ns == 8
    assert dict(stats.by_kind) == {Kind.EXIT: 8}
    assert stats.events_per_s > 0


def test_take_respects_max_events_and_waits() -> None:
    delivery = Delivery(max_events=100)
    delivery.deliver([obs(1), obs(2)])
    delivery.deliver([obs(3)])
    assert [o.pid for o in delivery.take(timeout=0, max_events=2)] == [1, 2]
    assert [o.pid for o in delivery.take(timeout=0)] == [3]
    assert delivery.take(timeout=0) == []
    t = threading.Timer(0.05, lambda: delivery.deliver([obs(9)]))
    t.start()
    start = time.monotonic()
    assert [o.pid for o in delivery.take(timeout=5)] == [9]
    assert time.monotonic() - start < 4


def test_callback_errors_are_counted_not_raised() -> None:
    seen: list[int] = []

    def bad(batch: list[Observation]) -> None:
        seen.extend(o.pid for o in batch)
        raise RuntimeError("consumer bug")

    delivery = Delivery(max_events=10, callback=bad)
    delivery.deliver([obs(1), obs(2)])
    assert seen == [1, 2]
    assert delivery.consumer_errors == 2
    assert delivery.take(timeout=0) == []  # nothing queued with a callback


def test_rate_decays_when_idle() -> None:
    delivery = Delivery(max_events=10)
    assert delivery.stats(None).events_per_s == 0.0
    assert SensorConfig().queue_max_events == 65536
