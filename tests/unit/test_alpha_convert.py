"""alpha.sensors.convert: every observation kind the sensor produces -> the typed event the rules
read (and alpha._convert: rules and validations for AlphaService).

Pure: hand-built observations, no sensor, no /proc. Each test also reads the event back through
the rule fields (alpha.rules.fields), since those are what the default rules see.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from alpha._convert import rule_to_proto, validation_to_proto
from alpha.rulecheck import validate
from alpha.rules import load_default
from alpha.rules.fields import Event, lookup
from alpha.sensors.convert import (
    BPF_PROG_TYPES,
    UNSET_AUID,
    Lookups,
    module_name,
    observation_to_event,
)
from alpha.sensors.model import (
    UNKNOWN_STDIO,
    Ancestor,
    BpfDetail,
    ChmodDetail,
    ChownDetail,
    Detail,
    ExecDetail,
    ExitDetail,
    ForkDetail,
    Kind,
    LinkDetail,
    MemfdDetail,
    MemProtDetail,
    ModuleDetail,
    NetDetail,
    Observation,
    OpenDetail,
    ProcessInfo,
    PtraceDetail,
    RenameDetail,
    SetIdDetail,
    SocketDetail,
    Stdio,
    UnlinkDetail,
)
from qsc.alpha.v1 import alpha_service_pb2
from qsc.common.v1 import (
    classification_pb2,
    file_details_pb2,
    kernel_details_pb2,
    network_details_pb2,
    process_details_pb2,
)

EPOCH = 1_700_000_000_000_000_000  # wall clock of the boot, ns
START = 5_000_000_000  # the process started 5 s after boot
PARENT = Ancestor("e-parent", 100, "bash", "/usr/bin/bash")
INFO = ProcessInfo(
    pid=4242,
    ppid=100,
    exec_id="e-self",
    parent_exec_id="e-parent",
    comm="evil",
    exe="/tmp/evil",
    args=("/tmp/evil", "-x"),
    cwd="/tmp",
    uid=1000,
    gid=1000,
    euid=1000,
    start_boot_ns=START,
    cgroup="/system.slice/docker-" + "a" * 64 + ".scope",
    container_id="a" * 64,
    container_runtime="docker",
    ancestry=(PARENT, Ancestor("e-init", 1, "systemd", "/usr/lib/systemd/systemd")),
)


def obs(
    kind: Kind, detail: Detail, *, syscall: str = "", ret: int | None = 0, **over: Any
) -> Observation:
    base = Observation(
        kind=kind,
        time_ns=EPOCH + START + 1_000_000_000,
        boot_ns=START + 1_000_000_000,
        pid=INFO.pid,
        tid=INFO.pid,
        ppid=INFO.ppid,
        uid=INFO.uid,
        gid=INFO.gid,
        euid=INFO.euid,
        comm=INFO.comm,
        syscall=syscall,
        ret=ret,
        process=INFO,
        detail=detail,
        source="ebpf",
    )
    return replace(base, **over)


def convert(o: Observation, lookups: Lookups | None = None) -> Event:
    event = observation_to_event(o, EPOCH, lookups or Lookups())
    assert event is not None
    assert event.summary
    return event


def field(event: Event, name: str, index: int | None = None) -> object:
    found = lookup(name)
    assert found is not None, name
    return found.extract(event, index)


# --- the process ----------------------------------------------------------------------------------


def test_process_identity_ancestry_and_container() -> None:
    event = convert(obs(Kind.OPEN, OpenDetail("/etc/shadow", "/etc/shadow", 0, 0, -100, False)))
    p = event.process
    assert (p.pid, p.ppid, p.uid, p.gid, p.euid, p.auid) == (
        4242,
        100,
        1000,
        1000,
        1000,
        UNSET_AUID,
    )
    assert (p.comm, p.exe, list(p.args), p.cwd) == (
        "evil",
        "/tmp/evil",
        ["/tmp/evil", "-x"],
        "/tmp",
    )
    assert (p.exec_id, p.parent_exec_id) == ("e-self", "e-parent")
    assert p.container_id == "a" * 64
    assert p.cgroup.endswith(".scope")
    assert p.start_time.ToNanoseconds() == EPOCH + START
    assert [(a.pid, a.exec_id, a.comm, a.exe) for a in p.ancestry] == [
        (100, "e-parent", "bash", "/usr/bin/bash"),
        (1, "e-init", "systemd", "/usr/lib/systemd/systemd"),
    ]
    assert event.time.ToNanoseconds() == EPOCH + START + 1_000_000_000
    assert field(event, "proc.pname") == "bash"
    assert field(event, "proc.aname", 2) == "systemd"
    assert field(event, "container.id") == "a" * 64


def test_process_unknown_to_the_table_keeps_the_kernel_facts() -> None:
    o = obs(Kind.OPEN, OpenDetail("/etc/shadow", "/etc/shadow", 0, 0, -100, False), process=None)
    p = convert(o).process
    assert (p.pid, p.ppid, p.uid, p.comm, p.exec_id, p.exe) == (4242, 100, 1000, "evil", "", "")


# --- process kinds --------------------------------------------------------------------------------

SOCK = Stdio("inet_socket", "", "127.0.0.1", 4444)


def test_exec_with_stdio_on_a_socket() -> None:
    detail = ExecDetail(
        filename="/bin/bash",
        exe="/usr/bin/bash",
        args=("bash", "-i"),
        args_truncated=False,
        cwd="/root",
        dirfd=-100,
        at_flags=0,
        from_memfd=False,
        exe_deleted=False,
        setuid_exec=False,
        stdio=(SOCK, SOCK, Stdio("tty", "/dev/pts/0")),
        old_pid=4242,
    )
    event = convert(obs(Kind.EXEC, detail, syscall="execve", ret=None))
    ex = event.process_exec
    assert event.WhichOneof("detail") == "process_exec"
    assert ex.filename == "/bin/bash"
    assert ex.stdin.kind == process_details_pb2.DESCRIPTOR_KIND_INET_SOCKET
    assert (ex.stdin.peer.address, ex.stdin.peer.port) == ("127.0.0.1", 4444)
    assert (ex.stderr.kind, ex.stderr.path) == (
        process_details_pb2.DESCRIPTOR_KIND_TTY,
        "/dev/pts/0",
    )
    # The exec's own view of the image wins over the table's.
    assert (event.process.exe, list(event.process.args)) == ("/usr/bin/bash", ["bash", "-i"])
    assert field(event, "exec.stdio.kinds") == ("inet_socket", "inet_socket", "tty")
    assert field(event, "exec.stdin.raddr") == "127.0.0.1"


def test_exec_from_memfd_and_unknown_stdio() -> None:
    detail = ExecDetail(
        filename="/dev/fd/3",
        exe="/memfd:payload (deleted)",
        args=("x",),
        args_truncated=True,
        cwd="",
        dirfd=3,
        at_flags=0x1000,
        from_memfd=True,
        exe_deleted=True,
        setuid_exec=True,
        stdio=UNKNOWN_STDIO,
        old_pid=4242,
    )
    event = convert(obs(Kind.EXEC, detail, syscall="execveat", ret=None))
    ex = event.process_exec
    assert (ex.exe_memfd, ex.exe_deleted, ex.setuid_exec) == (True, True, True)
    assert ex.stdin.kind == process_details_pb2.DESCRIPTOR_KIND_UNSPECIFIED
    assert event.process.args_truncated
    assert field(event, "exec.memfd") is True
    assert field(event, "exec.stdio.kinds") == ()


def test_exit_code_and_duration() -> None:
    event = convert(obs(Kind.EXIT, ExitDetail(3), ret=None))
    ex = event.process_exit
    assert (ex.exit_code, ex.signal) == (3, 0)
    assert ex.duration.ToNanoseconds() == 1_000_000_000
    killed = convert(obs(Kind.EXIT, ExitDetail(None, 9), ret=None)).process_exit
    assert (killed.exit_code, killed.signal) == (0, 9)


@pytest.mark.parametrize(
    ("request_", "expected", "name"),
    [
        (16, process_details_pb2.PTRACE_REQUEST_ATTACH, "attach"),
        (0x4206, process_details_pb2.PTRACE_REQUEST_SEIZE, "seize"),
        (5, process_details_pb2.PTRACE_REQUEST_POKE_MEMORY, "poke_memory"),
        (0x4205, process_details_pb2.PTRACE_REQUEST_SET_REGISTERS, "set_registers"),
        (17, process_details_pb2.PTRACE_REQUEST_OTHER, "other"),
    ],
)
def test_ptrace_target_from_the_process_table(request_: int, expected: int, name: str) -> None:
    target = replace(INFO, pid=777, exec_id="e-target", comm="sshd", exe="/usr/sbin/sshd", uid=0)
    lookups = Lookups(process=lambda pid: target if pid == 777 else None)
    detail = PtraceDetail(request_, f"PTRACE_{request_}", 777, 0, 0)
    event = convert(obs(Kind.PTRACE, detail, syscall="ptrace", ret=-1), lookups)
    pt = event.ptrace
    assert pt.request == expected
    assert pt.raw_request == request_
    assert (pt.target.pid, pt.target.exec_id, pt.target.comm, pt.target.uid) == (
        777,
        "e-target",
        "sshd",
        0,
    )
    assert pt.target.start_time.ToNanoseconds() == EPOCH + START
    assert pt.result == -1
    assert field(event, "ptrace.request") == name
    assert field(event, "evt.failed") is True


def test_ptrace_traceme_targets_the_parent() -> None:
    event = convert(obs(Kind.PTRACE, PtraceDetail(0, "PTRACE_TRACEME", 0, 0, 0)))
    assert event.ptrace.request == process_details_pb2.PTRACE_REQUEST_TRACEME
    assert event.ptrace.target.pid == INFO.ppid


def test_setuid_to_root_by_a_user() -> None:
    event = convert(obs(Kind.SETID, SetIdDetail((0,)), syscall="setuid", ret=-1))
    pc = event.privilege_change
    assert pc.call == process_details_pb2.PRIVILEGE_CALL_SETUID
    assert (pc.old_credentials.uid, pc.old_credentials.euid) == (1000, 1000)
    # Unprivileged setuid(0) asks for the effective id only.
    assert (pc.new_credentials.uid, pc.new_credentials.euid) == (1000, 0)
    assert pc.result == -1
    assert field(event, "priv.call") == "setuid"
    assert field(event, "priv.new.euid") == 0


def test_setresuid_and_setgid_and_unchanged_ids() -> None:
    root = replace(INFO, uid=0, euid=0)
    res = convert(
        obs(
            Kind.SETID,
            SetIdDetail((65534, None, 65534)),
            syscall="setresuid",
            uid=0,
            euid=0,
            process=root,
        )
    ).privilege_change
    assert (res.new_credentials.uid, res.new_credentials.euid, res.new_credentials.suid) == (
        65534,
        0,
        65534,
    )
    gid = convert(obs(Kind.SETID, SetIdDetail((50,)), syscall="setgid")).privilege_change
    assert gid.call == process_details_pb2.PRIVILEGE_CALL_SETGID
    assert (gid.old_credentials.gid, gid.new_credentials.egid) == (1000, 50)
    assert gid.new_credentials.uid == 1000


def test_memfd_create() -> None:
    event = convert(obs(Kind.MEMFD_CREATE, MemfdDetail("payload", 1), ret=3))
    assert (event.memfd_create.name, event.memfd_create.flags, event.memfd_create.result) == (
        "payload",
        1,
        3,
    )
    assert field(event, "memfd.name") == "payload"


# --- files ----------------------------------------------------------------------------------------


def test_file_read_of_a_sensitive_path() -> None:
    event = convert(obs(Kind.OPEN, OpenDetail("shadow", "/etc/shadow", 0, 0, -100, False), ret=3))
    fa = event.file_access
    assert (fa.path, fa.access, fa.result) == ("/etc/shadow", file_details_pb2.ACCESS_MODE_READ, 3)
    assert field(event, "file.read") is True
    assert field(event, "file.write") is False


def test_file_write_create_and_truncate() -> None:
    flags = 0o1 | 0o100 | 0o200 | 0o1000  # O_WRONLY|O_CREAT|O_EXCL|O_TRUNC
    event = convert(obs(Kind.OPEN, OpenDetail("/etc/x", "/etc/x", flags, 0o644, -100, True), ret=4))
    fa = event.file_access
    assert fa.access == file_details_pb2.ACCESS_MODE_WRITE
    assert (fa.created, fa.truncated, fa.flags) == (True, True, flags)
    assert field(event, "file.flag_names") == ("O_CREAT", "O_EXCL", "O_TRUNC")
    failed = convert(obs(Kind.OPEN, OpenDetail("/etc/x", "/etc/x", 0o1002, 0, -100, True), ret=-13))
    assert failed.file_access.access == file_details_pb2.ACCESS_MODE_READ_WRITE
    assert not failed.file_access.truncated  # a refused open truncated nothing


def test_permission_change_setuid() -> None:
    event = convert(obs(Kind.CHMOD, ChmodDetail("x", "/tmp/x", 0o104755, -100, True, False, False)))
    pc = event.permission_change
    assert (pc.path, pc.new_mode) == ("/tmp/x", 0o4755)
    assert (pc.setuid_added, pc.setgid_added, pc.world_writable) == (True, False, False)
    assert not pc.HasField("old_mode")
    assert field(event, "file.setuid_added") is True


def test_ownership_change_keeps_unchanged_ids_absent() -> None:
    event = convert(obs(Kind.CHOWN, ChownDetail("x", "/etc/x", 0, None, -100, 0)))
    oc = event.ownership_change
    assert (oc.path, oc.new_uid, oc.HasField("new_gid")) == ("/etc/x", 0, False)
    assert field(event, "file.new_uid") == 0
    assert field(event, "file.new_gid") is None


def test_delete_and_rmdir() -> None:
    gone = convert(obs(Kind.UNLINK, UnlinkDetail("a.log", "/var/log/a.log", -100, 0)))
    assert (gone.file_delete.path, gone.file_delete.directory) == ("/var/log/a.log", False)
    rmdir = convert(obs(Kind.UNLINK, UnlinkDetail("d", "/var/log/d", -100, 0x200)))
    assert rmdir.file_delete.directory
    assert field(rmdir, "file.is_dir") is True


def test_rename() -> None:
    detail = RenameDetail("a", "b", "/var/log/a", "/tmp/b", 1)
    event = convert(obs(Kind.RENAME, detail))
    fr = event.file_rename
    assert (fr.old_path, fr.new_path, fr.flags) == ("/var/log/a", "/tmp/b", 1)
    assert field(event, "file.path") == "/tmp/b"
    assert field(event, "file.oldpath") == "/var/log/a"


def test_symlink_keeps_its_text_and_hard_link_its_resolved_target() -> None:
    sym = LinkDetail("../etc/shadow", "x", "../etc/shadow", "/tmp/x", True, 0)
    event = convert(obs(Kind.LINK, sym, syscall="symlinkat"))
    fl = event.file_link
    assert (fl.target, fl.link_path, fl.symbolic, fl.result) == ("../etc/shadow", "/tmp/x", True, 0)
    assert field(event, "link.target") == "../etc/shadow"
    assert field(event, "file.path") == "/tmp/x"
    assert field(event, "file.paths") == ("../etc/shadow", "/tmp/x")
    hard = LinkDetail("orig", "hard", "/srv/orig", "/srv/hard", False, 0x400)
    event = convert(obs(Kind.LINK, hard, syscall="linkat", ret=-17))
    fl = event.file_link
    assert (fl.target, fl.link_path, fl.symbolic, fl.result) == (
        "/srv/orig",
        "/srv/hard",
        False,
        -17,
    )
    assert field(event, "link.symbolic") is False


# --- network --------------------------------------------------------------------------------------


def test_packet_socket() -> None:
    # socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)) on a little-endian host.
    event = convert(
        obs(Kind.SOCKET, SocketDetail(17, 3 | 0o2000000, 0x0300), syscall="socket", ret=5)
    )
    sc = event.socket_create
    assert sc.family == network_details_pb2.ADDRESS_FAMILY_PACKET
    assert (sc.raw_family, sc.socket_type, sc.raw_protocol, sc.result) == (17, 3, 0x0300, 5)
    assert "raw packet socket (ethertype 0x0003)" in event.summary
    assert field(event, "net.family") == "packet"
    assert field(event, "socket.type") == 3
    other = convert(obs(Kind.SOCKET, SocketDetail(40, 1, 0), ret=-97))  # AF_VSOCK
    assert other.socket_create.family == network_details_pb2.ADDRESS_FAMILY_OTHER
    assert (other.socket_create.raw_family, other.socket_create.result) == (40, -97)


def test_connect_asks_the_transport() -> None:
    asked: list[tuple[int, int]] = []

    def protocol(pid: int, fd: int) -> str:
        asked.append((pid, fd))
        return "tcp"

    event = convert(
        obs(Kind.CONNECT, NetDetail(5, "inet", "203.0.113.9", 2222), ret=-115),
        Lookups(protocol=protocol),
    )
    nc = event.network_connection
    assert asked == [(4242, 5)]
    assert nc.operation == network_details_pb2.CONNECTION_OPERATION_CONNECT
    assert (nc.family, nc.protocol) == (
        network_details_pb2.ADDRESS_FAMILY_INET,
        network_details_pb2.TRANSPORT_PROTOCOL_TCP,
    )
    assert (nc.remote.address, nc.remote.port, nc.result) == ("203.0.113.9", 2222, -115)
    assert field(event, "net.dport") == 2222
    assert field(event, "net.proto") == "tcp"


def test_accept_is_tcp_and_unix_has_no_transport() -> None:
    acc = convert(obs(Kind.ACCEPT, NetDetail(3, "inet6", "2001:db8::1", 50000), ret=7))
    assert acc.network_connection.operation == network_details_pb2.CONNECTION_OPERATION_ACCEPT
    assert acc.network_connection.protocol == network_details_pb2.TRANSPORT_PROTOCOL_TCP
    assert field(acc, "net.saddr") == "2001:db8::1"
    unix = convert(obs(Kind.CONNECT, NetDetail(3, "unix", "/run/x.sock", 0)))
    assert unix.network_connection.family == network_details_pb2.ADDRESS_FAMILY_UNIX
    assert unix.network_connection.protocol == network_details_pb2.TRANSPORT_PROTOCOL_UNSPECIFIED
    assert unix.network_connection.remote.address == "/run/x.sock"


# --- kernel ---------------------------------------------------------------------------------------


def test_finit_module_names_the_module_from_its_file() -> None:
    detail = ModuleDetail(3, "/tmp/x/rootkit.ko.xz", "debug=1", 0, 0)
    event = convert(obs(Kind.MODULE_LOAD, detail, syscall="finit_module", ret=-1))
    ml = event.module_load
    assert ml.call == kernel_details_pb2.MODULE_LOAD_CALL_FINIT_MODULE
    assert (ml.name, ml.path, ml.params, ml.result) == (
        "rootkit",
        "/tmp/x/rootkit.ko.xz",
        "debug=1",
        -1,
    )
    init = convert(obs(Kind.MODULE_LOAD, ModuleDetail(-1, "", "p=2", 64, 0), syscall="init_module"))
    assert init.module_load.call == kernel_details_pb2.MODULE_LOAD_CALL_INIT_MODULE
    assert field(init, "module.call") == "init_module"
    assert module_name("/lib/modules/x/ext4.ko") == "ext4"


def test_bpf_program_load_and_other_commands() -> None:
    event = convert(obs(Kind.BPF, BpfDetail(5, "BPF_PROG_LOAD", 6, 2, "qsc_xdp"), ret=9))
    bl = event.bpf_program_load
    assert (bl.program_type, bl.raw_program_type, bl.program_name, bl.instruction_count) == (
        "xdp",
        6,
        "qsc_xdp",
        2,
    )
    assert bl.result == 9
    assert BPF_PROG_TYPES[2] == "kprobe"
    odd = convert(obs(Kind.BPF, BpfDetail(5, "BPF_PROG_LOAD", 999, 1, ""), ret=-22))
    assert odd.bpf_program_load.program_type == "type_999"
    attach = obs(Kind.BPF, BpfDetail(8, "BPF_PROG_ATTACH", 0, 0, ""))
    assert observation_to_event(attach, EPOCH) is None


def test_kinds_without_an_event_detail() -> None:
    assert observation_to_event(obs(Kind.FORK, ForkDetail(5, 0, "e-child")), EPOCH) is None
    memprot = obs(Kind.MEMPROT, MemProtDetail(0x1000, 4096, 7, 0x22, -1), syscall="mprotect")
    assert observation_to_event(memprot, EPOCH) is None


# --- rules, for AlphaService ----------------------------------------------------------------------


def test_rule_to_proto() -> None:
    rule = load_default().get("alpha.ptrace_attach")
    assert rule is not None
    msg = rule_to_proto(rule)
    assert (msg.id, msg.name, msg.enabled) == ("alpha.ptrace_attach", rule.name, True)
    assert msg.priority == classification_pb2.SEVERITY_MEDIUM
    assert [t.id for t in msg.techniques] == ["T1055.008"]
    assert msg.techniques[0].name == "Ptrace System Calls"
    assert classification_pb2.MITRE_TACTIC_DEFENSE_EVASION in msg.techniques[0].tactics
    assert msg.source_file.endswith("30_privilege.yaml")
    assert msg.source_line > 0
    assert msg.exception_count == 1  # its one `allow`
    assert "ptrace.request" in msg.condition


def test_validation_to_proto() -> None:
    bad = validate([("local.yaml", "- rule: X\n  id: x\n  desc: d\n  condition: nope =\n")])
    msg = validation_to_proto(bad)
    assert not msg.valid
    (problem,) = msg.problems
    assert problem.file == "local.yaml"
    assert problem.line >= 1
    assert problem.severity == alpha_service_pb2.PROBLEM_SEVERITY_ERROR
    assert problem.reason
