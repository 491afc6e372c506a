"""Decoding ring-buffer records (every kind), their C layout, the netlink process connector's
records, and raw record -> observation enrichment. Pure: no kernel, no root."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from alpha.sensors import decode as d
from alpha.sensors.ebpf import Enricher
from alpha.sensors.fallback import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_PTRACE,
    PROC_EVENT_UID,
    listen_message,
    parse_proc_events,
)
from alpha.sensors.model import (
    UNKNOWN_STDIO,
    ChmodDetail,
    ChownDetail,
    DupDetail,
    ExecDetail,
    Kind,
    LinkDetail,
    OpenDetail,
    RenameDetail,
    SocketDetail,
    UnlinkDetail,
)
from alpha.sensors.proctable import ProcessTable

RECORDS_H = Path(__file__).parents[2] / "alpha/bpf/records.h"
CC = shutil.which("cc") or shutil.which("gcc")
STRUCTS = ["rec_hdr", *d.PAYLOAD_FIELDS]


def hdr(kind: int, sc: int = 0, *, ret: int = 0, tgid: int = 100, tid: int = 101) -> bytes:
    return struct.pack(
        "<QQqIIIIII16s", 5_000_000_000, 77, ret, kind, sc, tid, tgid, 1000, 1001, b"comm\0junk"
    )


# The identity fields of an exec record the kernel could not fill (no ID_F_KERNEL).
NO_IDENTITY = (0, 0, 0, 0, 0, 0, 0, 0, b"", 0, 0, 0, 0, 0, 0, b"", *(0, 0, 0, 0, b"") * 3, b"")


def payload(name: str, *values: object) -> bytes:
    return struct.pack(d._fmt(d.PAYLOAD_FIELDS[name]), *values)


# --- layout -------------------------------------------------------------------------------------


def test_c_layout_matches_python_mirror(tmp_path: Path) -> None:
    """Compile records.h with the host compiler; every offset and size must match LAYOUTS."""
    if CC is None:
        pytest.skip("no C compiler")
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;",
        "typedef int32_t s32; typedef int64_t s64;",
        f'#include "{RECORDS_H}"',
        "int main(void) {",
    ]
    for name in STRUCTS:
        lines.append(f'printf("{name} sizeof 0 %zu\\n", sizeof(struct {name}));')
        if name != "rec_hdr":  # every record starts with the header
            lines.append(f'printf("{name} hdr %zu 64\\n", offsetof(struct {name}, hdr));')
        for field, _, _ in d.layout(name):
            member = f"((struct {name} *)0)->{field}"
            lines.append(
                f'printf("{name} {field} %zu %zu\\n", offsetof(struct {name}, {field}), '
                f"sizeof({member}));"
            )
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    binary = tmp_path / "layout"
    subprocess.run([CC, "-Wall", "-Werror", "-o", str(binary), str(src)], check=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    c_view = {}
    for line in out.splitlines():
        name, field, a, b = line.split()
        c_view[(name, field)] = (int(a), int(b))
    for name in STRUCTS:
        assert c_view[(name, "sizeof")][1] == d.struct_size(name), name
        if name != "rec_hdr":
            assert c_view[(name, "hdr")] == (0, 64)
        for field, offset, size in d.layout(name):
            assert c_view[(name, field)] == (offset, size), (name, field)


def test_header_is_64_bytes() -> None:
    assert d.HEADER_SIZE == 64


# --- every kind ---------------------------------------------------------------------------------


def test_exec_record_variable_length_args() -> None:
    args = b"/bin/echo\0hello world\0\xff\xfe\0"
    buf = (
        hdr(d.KIND_EXEC, 2)
        + payload(
            "rec_exec",
            99,
            3,
            len(args),
            d.EXEC_F_ARGS_TRUNCATED,
            5,
            0x1000,
            b"/dev/fd/5",
            *NO_IDENTITY,
        )
        + args
    )
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawExec)
    assert rec.hdr.ts_ns == 5_000_000_000
    assert rec.hdr.cgroup_id == 77
    assert rec.hdr.comm == "comm"  # cut at the NUL, junk after it ignored
    assert (rec.hdr.tgid, rec.hdr.tid, rec.hdr.uid, rec.hdr.gid) == (100, 101, 1000, 1001)
    assert rec.hdr.syscall == "execveat"
    assert rec.filename == "/dev/fd/5"
    assert rec.args == ("/bin/echo", "hello world", "\\xff\\xfe")
    assert rec.args_truncated
    assert not rec.no_stash
    assert (rec.old_pid, rec.dirfd, rec.at_flags) == (99, 5, 0x1000)


def test_exec_without_stash() -> None:
    buf = hdr(d.KIND_EXEC) + payload(
        "rec_exec", 7, 0, 0, d.EXEC_F_NO_STASH, 0, 0, b"/x", *NO_IDENTITY
    )
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawExec)
    assert rec.no_stash
    assert rec.args == ()
    assert rec.hdr.syscall == ""


def test_fork_and_exit() -> None:
    fork = d.decode_record(hdr(d.KIND_FORK) + payload("rec_fork", 555, 0, 0x11))
    assert isinstance(fork, d.RawFork)
    assert (fork.child_pid, fork.clone_flags) == (555, 0x11)
    known = d.decode_record(hdr(d.KIND_EXIT) + payload("rec_exit", 3, d.EXIT_F_CODE_KNOWN))
    assert isinstance(known, d.RawExit)
    assert known.exit_code == 3
    unknown = d.decode_record(hdr(d.KIND_EXIT) + payload("rec_exit", 0, 0))
    assert isinstance(unknown, d.RawExit)
    assert unknown.exit_code is None


@pytest.mark.parametrize(
    ("kind", "sc"),
    [
        (d.KIND_OPEN, 4),
        (d.KIND_CHMOD, 9),
        (d.KIND_CHOWN, 14),
        (d.KIND_UNLINK, 16),
        (d.KIND_MEMFD, 24),
    ],
)
def test_path_records_cut_to_path_len(kind: int, sc: int) -> None:
    path = b"/etc/shadow\0"
    buf = hdr(kind, sc, ret=3) + payload("rec_path", -100, 0o4755, 0o101, 0, 65534, len(path), 0)
    rec = d.decode_record(buf + path)
    assert isinstance(rec, d.RawPath)
    assert rec.path == "/etc/shadow"
    assert rec.hdr.ret == 3
    assert (rec.dfd, rec.mode, rec.flags, rec.uid, rec.gid) == (-100, 0o4755, 0o101, 0, 65534)
    assert rec.hdr.syscall == d.SYSCALL_NAMES[sc]
    # Unreadable path: path_len 0, nothing follows.
    empty = d.decode_record(hdr(kind) + payload("rec_path", 3, 0, 0, 0, 0, 0, 0))
    assert isinstance(empty, d.RawPath)
    assert empty.path == ""


def test_rename() -> None:
    buf = hdr(d.KIND_RENAME, 19) + payload("rec_two_paths", -100, 7, 1, 0, b"a.log", b"b.log\0old")
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawRename)
    assert (rec.oldpath, rec.newpath, rec.olddfd, rec.newdfd, rec.flags) == (
        "a.log",
        "b.log",
        -100,
        7,
        1,
    )


def test_ptrace() -> None:
    rec = d.decode_record(hdr(d.KIND_PTRACE, 20) + payload("rec_ptrace", 0x4206, 1234, 0, 8))
    assert isinstance(rec, d.RawPtrace)
    assert (rec.request, rec.target, rec.addr, rec.data) == (0x4206, 1234, 0, 8)


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("<H", 2) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr_in6(ip: str, port: int, scope: int = 0) -> bytes:
    return (
        struct.pack("<H", 10)
        + struct.pack(">H", port)
        + bytes(4)
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("<I", scope)
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (sockaddr_in("127.0.0.1", 8080), ("inet", "127.0.0.1", 8080)),
        (sockaddr_in6("::1", 443), ("inet6", "::1", 443)),
        (sockaddr_in6("fe80::1", 22, 2), ("inet6", "fe80::1%2", 22)),
        (sockaddr_in6("::ffff:10.0.0.1", 80), ("inet6", "10.0.0.1", 80)),
        (struct.pack("<H", 1) + b"/run/x.sock\0", ("unix", "/run/x.sock", 0)),
        (struct.pack("<H", 1) + b"\0abstract", ("unix", "@abstract", 0)),
        (struct.pack("<H", 17) + bytes(6), ("af17", "", 0)),
        (b"\x02", ("", "", 0)),
    ],
)
def test_sockaddr(raw: bytes, expected: tuple[str, str, int]) -> None:
    assert d.decode_sockaddr(raw) == expected


@pytest.mark.parametrize("kind", [d.KIND_CONNECT, d.KIND_ACCEPT])
def test_sock_records(kind: int) -> None:
    addr = sockaddr_in("10.1.2.3", 4444)
    buf = hdr(kind, 21, ret=-115) + payload("rec_sock", 3, len(addr), 0, 0, 17, 0, addr)
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawSock)
    assert rec.protocol == 17
    assert (rec.fd, rec.family, rec.address, rec.port, rec.hdr.ret) == (
        3,
        "inet",
        "10.1.2.3",
        4444,
        -115,
    )


def test_module() -> None:
    buf = hdr(d.KIND_MODULE, 26, ret=-38) + payload("rec_module", 7, 2, 0, 6, 0, b"x=1 y\0junk")
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawModule)
    assert (rec.fd, rec.flags, rec.image_len, rec.params, rec.hdr.ret) == (7, 2, 0, "x=1 y", -38)
    assert rec.hdr.syscall == "finit_module"


def test_bpf() -> None:
    buf = hdr(d.KIND_BPF, 27, ret=5) + payload("rec_bpf", 5, 128, 1, 2, 0, 0, b"qsc_test")
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawBpf)
    assert (rec.cmd, rec.size, rec.prog_type, rec.insn_cnt, rec.prog_name) == (
        5,
        128,
        1,
        2,
        "qsc_test",
    )


@pytest.mark.parametrize(
    ("sc", "expected"),
    [
        (28, (0,)),  # setuid(0)
        (30, (None, 0)),  # setreuid(-1, 0)
        (32, (1, None, 3)),  # setresuid(1, -1, 3)
    ],
)
def test_setid(sc: int, expected: tuple[int | None, ...]) -> None:
    raw = {28: (0, 0xFFFFFFFF, 0xFFFFFFFF), 30: (0xFFFFFFFF, 0, 0xFFFFFFFF), 32: (1, 0xFFFFFFFF, 3)}
    rec = d.decode_record(hdr(d.KIND_SETID, sc) + payload("rec_setid", *raw[sc], 0))
    assert isinstance(rec, d.RawSetId)
    assert rec.ids == expected


def test_memprot() -> None:
    buf = hdr(d.KIND_MEMPROT, 37) + payload("rec_memprot", 0x7F0000, 4096, 7, 0x22, -1)
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawMemProt)
    assert (rec.addr, rec.length, rec.prot, rec.flags, rec.fd) == (0x7F0000, 4096, 7, 0x22, -1)
    assert rec.hdr.syscall == "mprotect"


def test_socket() -> None:
    buf = hdr(d.KIND_SOCKET, 39, ret=5) + payload("rec_socket", 17, 3 | 0o2000000, 0x0300, 0)
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawSocket)
    assert (rec.family, rec.type, rec.protocol, rec.hdr.ret) == (17, 3 | 0o2000000, 0x0300, 5)
    assert rec.hdr.syscall == "socket"


@pytest.mark.parametrize(("sc", "symbolic"), [(40, False), (41, False), (42, True), (43, True)])
def test_link(sc: int, symbolic: bool) -> None:
    buf = hdr(d.KIND_LINK, sc) + payload(
        "rec_two_paths", -100, 7, 0x400, 0, b"/etc/shadow", b"x\0old"
    )
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawLink)
    assert (rec.target, rec.linkpath, rec.olddfd, rec.newdfd, rec.flags) == (
        "/etc/shadow",
        "x",
        -100,
        7,
        0x400,
    )
    assert rec.symbolic is symbolic


def test_every_kind_has_a_decoder() -> None:
    assert set(d._DECODERS) == set(d.KIND_NAMES)


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        bytes(63),
        hdr(d.KIND_PTRACE) + bytes(8),  # payload too short
        hdr(99),  # unknown kind
    ],
)
def test_decode_errors(buf: bytes) -> None:
    with pytest.raises(d.DecodeError):
        d.decode_record(buf)


def test_unknown_syscall_number_is_named_not_fatal() -> None:
    rec = d.decode_record(hdr(d.KIND_PTRACE, 200) + payload("rec_ptrace", 16, 1, 0, 0))
    assert rec.hdr.syscall == "sc200"


# --- netlink process connector ------------------------------------------------------------------


def nl(what: int, data: bytes) -> bytes:
    ev = struct.pack("=IIQ", what, 0, 123_456) + data
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(ev), 0) + ev
    msg = struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn
    return msg + bytes(-len(msg) % 4)


def test_listen_message() -> None:
    msg = listen_message()
    length, typ = struct.unpack_from("=IH", msg)
    assert length == len(msg) == 16 + 20 + 4
    assert typ == 3
    assert struct.unpack_from("=II", msg, 16) == (CN_IDX_PROC, CN_VAL_PROC)
    assert struct.unpack_from("=I", msg, 36) == (1,)


def test_parse_proc_events_every_kind() -> None:
    datagram = b"".join(
        [
            nl(PROC_EVENT_FORK, struct.pack("=IIII", 10, 10, 11, 11)),
            nl(PROC_EVENT_EXEC, struct.pack("=II", 11, 11)),
            nl(PROC_EVENT_UID, struct.pack("=IIII", 11, 11, 0, 1000)),
            nl(PROC_EVENT_PTRACE, struct.pack("=IIII", 11, 11, 20, 20)),
            nl(PROC_EVENT_EXIT, struct.pack("=IIiI", 11, 11, 256, 17)),
            nl(0x200, struct.pack("=II16s", 11, 11, b"comm")),  # COMM: ignored
        ]
    )
    evs = parse_proc_events(datagram)
    assert [e.what for e in evs] == [
        PROC_EVENT_FORK,
        PROC_EVENT_EXEC,
        PROC_EVENT_UID,
        PROC_EVENT_PTRACE,
        PROC_EVENT_EXIT,
    ]
    fork, exe, uid, ptrace, exit_ = evs
    assert (fork.parent_tgid, fork.tgid, fork.mono_ns) == (10, 11, 123_456)
    assert (exe.pid, exe.tgid) == (11, 11)
    assert (uid.ruid, uid.euid) == (0, 1000)
    assert ptrace.parent_tgid == 20
    assert exit_.exit_code == 256


def test_parse_proc_events_ignores_garbage() -> None:
    assert parse_proc_events(b"") == []
    assert parse_proc_events(b"\xff" * 10) == []
    truncated = nl(PROC_EVENT_EXEC, struct.pack("=II", 1, 1))[:-10]
    assert parse_proc_events(truncated) == []


# --- raw record -> observation --------------------------------------------------------------------


def fake_proc(root: Path, pid: int, ppid: int, cwd: str, fds: dict[int, str]) -> None:
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "stat").write_text(f"{pid} (sh) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0")
    (base / "status").write_text("Name:\tsh\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    (base / "cmdline").write_bytes(b"sh\0")
    (base / "cgroup").write_text("0::/user.slice\n")
    os.symlink("/usr/bin/dash", base / "exe")
    os.symlink(cwd, base / "cwd")
    for fd, target in fds.items():
        os.symlink(target, base / "fd" / str(fd))


@pytest.fixture
def enricher(tmp_path: Path) -> Enricher:
    fake_proc(tmp_path, 100, 1, "/srv/app", {0: "socket:[1]", 1: "socket:[1]", 3: "/var/log"})
    table = ProcessTable("boot", proc=tmp_path)
    table.seed()
    return Enricher(table, proc=tmp_path)


def path_rec(kind: int, sc: int, path: str, *, dfd: int = -100, mode: int = 0, flags: int = 0,
             uid: int = 0, gid: int = 0) -> d.RawRecord:  # fmt: skip
    raw = path.encode() + b"\0"
    return d.decode_record(
        hdr(kind, sc, tgid=100) + payload("rec_path", dfd, mode, flags, uid, gid, len(raw), 0) + raw
    )


def test_dup_onto_stdio(enricher: Enricher) -> None:
    port = int.from_bytes((4444).to_bytes(2, "big"), "little")
    rec = d.decode_record(
        hdr(d.KIND_DUP, 54, tgid=100, ret=1)
        + payload("rec_dup", 3, 1, 0, 5, 0, port, bytes([10, 0, 0, 9]) + bytes(12))
    )
    assert isinstance(rec, d.RawDup)
    assert (rec.oldfd, rec.newfd, rec.hdr.syscall) == (3, 1, "dup2")
    assert rec.stdio == ("inet_socket", "10.0.0.9", 4444)
    obs = enricher.observe(rec, wall_offset_ns=0)
    assert obs is not None
    assert obs.kind is Kind.DUP
    assert isinstance(obs.detail, DupDetail)
    assert (obs.detail.target.peer_address, obs.detail.target.peer_port) == ("10.0.0.9", 4444)


def test_observe_open_named_by_the_kernel(enricher: Enricher) -> None:
    """A relative or non-canonical open the kernel resolved from its fd: the kernel's path
    wins over the cwd (which could have changed), the raw path is kept."""
    rec = d.decode_record(
        hdr(d.KIND_OPEN_RESOLVED, 4, tgid=100, ret=3)
        + payload("rec_resolved", -100, 0, 0, d.ID_F_EXE_COMPLETE, 2, b"../../etc/shadow",
                  b"/etc/shadow")
    )  # fmt: skip
    assert isinstance(rec, d.RawPath)
    assert rec.hdr.kind == d.KIND_OPEN
    assert (rec.path, rec.raw_path) == ("/etc/shadow", "../../etc/shadow")
    obs = enricher.observe(rec, wall_offset_ns=0)
    assert obs is not None
    assert isinstance(obs.detail, OpenDetail)
    assert (obs.detail.path, obs.detail.abs_path) == ("../../etc/shadow", "/etc/shadow")
    assert obs.detail.kernel_path
    assert not obs.detail.write


def test_observe_open_resolves_relative_paths(enricher: Enricher) -> None:
    obs = enricher.observe(path_rec(d.KIND_OPEN, 4, "conf/x", flags=0o1), wall_offset_ns=10)
    assert obs is not None
    assert obs.kind is Kind.OPEN
    assert isinstance(obs.detail, OpenDetail)
    assert obs.detail.abs_path == "/srv/app/conf/x"
    assert obs.detail.write
    assert obs.time_ns == 5_000_000_010
    assert obs.boot_ns == 5_000_000_000
    assert obs.ppid == 1
    assert obs.process is not None
    assert obs.process.exe == "/usr/bin/dash"
    at_fd = enricher.observe(path_rec(d.KIND_UNLINK, 16, "auth.log", dfd=3), 0)
    assert at_fd is not None
    assert isinstance(at_fd.detail, UnlinkDetail)
    assert at_fd.detail.abs_path == "/var/log/auth.log"


def test_observe_chmod_chown_rename(enricher: Enricher) -> None:
    chmod = enricher.observe(path_rec(d.KIND_CHMOD, 9, "/tmp/x", mode=0o4755), 0)
    assert chmod is not None
    assert isinstance(chmod.detail, ChmodDetail)
    assert chmod.detail.setuid
    assert not chmod.detail.setgid
    assert not chmod.detail.world_writable
    chown = enricher.observe(path_rec(d.KIND_CHOWN, 14, "/tmp/x", uid=0, gid=0xFFFFFFFF), 0)
    assert chown is not None
    assert isinstance(chown.detail, ChownDetail)
    assert (chown.detail.uid, chown.detail.gid) == (0, None)
    rename = d.decode_record(
        hdr(d.KIND_RENAME, 18, tgid=100) + payload("rec_two_paths", -100, -100, 0, 0, b"a", b"/b")
    )
    obs = enricher.observe(rename, 0)
    assert obs is not None
    assert isinstance(obs.detail, RenameDetail)
    assert (obs.detail.old_abs_path, obs.detail.new_abs_path) == ("/srv/app/a", "/b")


def test_observe_links_and_sockets(enricher: Enricher) -> None:
    # Hard link: both paths resolve (target against olddfd 3 = /var/log, link against the cwd).
    hard = d.decode_record(
        hdr(d.KIND_LINK, 41, tgid=100)
        + payload("rec_two_paths", 3, -100, 0, 0, b"auth.log", b"copy")
    )
    obs = enricher.observe(hard, 0)
    assert obs is not None
    assert obs.kind is Kind.LINK
    assert isinstance(obs.detail, LinkDetail)
    assert (obs.detail.target_abs_path, obs.detail.link_abs_path) == (
        "/var/log/auth.log",
        "/srv/app/copy",
    )
    assert not obs.detail.symbolic
    # Symlink: the stored text is kept as is, never resolved against the cwd.
    sym = d.decode_record(
        hdr(d.KIND_LINK, 43, tgid=100) + payload("rec_two_paths", -1, -100, 0, 0, b"../x", b"l")
    )
    obs = enricher.observe(sym, 0)
    assert obs is not None
    assert isinstance(obs.detail, LinkDetail)
    assert (obs.detail.target_abs_path, obs.detail.link_abs_path) == ("../x", "/srv/app/l")
    assert obs.detail.symbolic
    sock = d.decode_record(
        hdr(d.KIND_SOCKET, 39, tgid=100, ret=4) + payload("rec_socket", 17, 3, 0x0300, 0)
    )
    obs = enricher.observe(sock, 0)
    assert obs is not None
    assert (obs.kind, obs.ret, obs.syscall) == (Kind.SOCKET, 4, "socket")
    assert obs.detail == SocketDetail(17, 3, 0x0300)


def test_observe_exec_fork_exit(enricher: Enricher, tmp_path: Path) -> None:
    table = enricher.table
    parent = table.info(100)
    assert parent is not None
    fork = enricher.observe(
        d.decode_record(hdr(d.KIND_FORK, tgid=100) + payload("rec_fork", 200, 0, 0)), 0
    )
    assert fork is not None
    assert fork.kind is Kind.FORK
    args = b"nc\0-e\0/bin/sh\0"
    exec_rec = d.decode_record(
        hdr(d.KIND_EXEC, 1, tgid=200, tid=200)
        + payload("rec_exec", 200, 3, len(args), 0, 0, 0, b"/usr/bin/nc", *NO_IDENTITY)
        + args
    )
    obs = enricher.observe(exec_rec, 0)
    assert obs is not None
    assert isinstance(obs.detail, ExecDetail)
    assert obs.detail.args == ("nc", "-e", "/bin/sh")
    assert obs.detail.exe == "/usr/bin/nc"  # pid 200 has no /proc entry: the kernel's filename
    assert obs.detail.stdio == UNKNOWN_STDIO
    assert not obs.detail.setuid_exec
    assert obs.process is not None
    assert obs.process.parent_exec_id == parent.exec_id
    assert obs.process.ancestry[0].exec_id == parent.exec_id
    assert obs.ppid == 100
    assert obs.ret is None
    exit_ = enricher.observe(
        d.decode_record(hdr(d.KIND_EXIT, tgid=200) + payload("rec_exit", 0, 1)), 0
    )
    assert exit_ is not None
    assert exit_.process is not None
    assert exit_.process.exec_id == obs.process.exec_id
    assert 200 not in table


def test_observe_setid_updates_table(enricher: Enricher) -> None:
    rec = d.decode_record(hdr(d.KIND_SETID, 28, tgid=100) + payload("rec_setid", 65534, 0, 0, 0))
    enricher.observe(rec, 0)
    info = enricher.table.info(100)
    assert info is not None
    assert (info.uid, info.euid) == (65534, 65534)
    failed = d.decode_record(
        hdr(d.KIND_SETID, 28, tgid=100, ret=-1) + payload("rec_setid", 0, 0, 0, 0)
    )
    enricher.observe(failed, 0)
    info = enricher.table.info(100)
    assert info is not None
    assert info.uid == 65534


def test_tcp_close_record() -> None:
    v4 = bytes([192, 0, 2, 1]) + bytes(12)
    buf = hdr(d.KIND_TCP_CLOSE) + payload(
        "rec_tcp_close", 77, 300 << 20, 5, 123, 9, 8, 2, 40000, 443, 5, d.TCPC_F_OWNER, 0, v4,
        bytes([198, 51, 100, 7]) + bytes(12),
    )  # fmt: skip
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawTcpClose)
    assert (rec.family, rec.local_address, rec.local_port) == ("inet", "192.0.2.1", 40000)
    assert (rec.remote_address, rec.remote_port) == ("198.51.100.7", 443)
    assert (rec.cookie, rec.bytes_acked, rec.bytes_received) == (77, 300 << 20, 5)
    assert (rec.old_state, rec.owner_known, rec.open_ns) == (5, True, 123)
    mapped = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    v6 = d.decode_record(
        hdr(d.KIND_TCP_CLOSE)
        + payload("rec_tcp_close", 0, 0, 0, 0, 0, 0, 10, 1, 2, 2, 0, 0, bytes(15) + b"\1", mapped)
    )
    assert isinstance(v6, d.RawTcpClose)
    assert (v6.family, v6.local_address, v6.remote_address) == ("inet6", "::1", "10.0.0.1")
    assert not v6.owner_known


def test_exec_record_with_kernel_identity() -> None:
    port = int.from_bytes((4444).to_bytes(2, "big"), "little")  # network order, read as a u16
    stdio = (
        5, 0, port, 0, bytes([10, 0, 0, 9]) + bytes(12),
        3, 0, 0, 0, b"",
        1, 0, 0, 0, b"",
    )  # fmt: skip
    exe = b"payload\0"
    env = b"LD_PRELOAD=/tmp/x.so\0http_proxy=http://10.0.0.9:3128\0junk"
    flags = d.ID_F_KERNEL | d.ID_F_EXE_PSEUDO | d.ID_F_LOGINUID
    buf = hdr(d.KIND_EXEC) + payload(
        "rec_exec", 1, 0, 0, 0, 0, 0, b"/proc/self/fd/3",
        0, 0, 4242, 7, 1, flags, len(exe), 1, b"pts3", 1 << 21, (1 << 21) | 1,
        30, d.ENV_F_SCANNED, len(env), 2, env, *stdio, exe,
    )  # fmt: skip
    rec = d.decode_record(buf)
    assert isinstance(rec, d.RawExec)
    ident = rec.identity
    assert ident is not None
    assert (ident.exe, ident.auid, ident.sessionid, ident.ppid, ident.tty) == (
        "/payload (deleted)", 4242, 7, 1, "pts/3",
    )  # fmt: skip
    assert (ident.cap_effective, ident.cap_permitted) == (1 << 21, (1 << 21) | 1)
    assert ident.stdio == (("inet_socket", "10.0.0.9", 4444), ("tty", "", 0), ("closed", "", 0))
    assert ident.env == ("LD_PRELOAD=/tmp/x.so", "http_proxy=http://10.0.0.9:3128")
    assert ident.env_complete
