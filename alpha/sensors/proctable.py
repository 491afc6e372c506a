"""The process table: pid -> exec_id, parent, bounded ancestry, command, cgroup and container.

Seeded from /proc at start, then kept current by fork/exec/exit observations. Every read of
/proc is best effort: a process may be gone by the time its event is processed, and then the
kernel's facts (args, filename, uids, cgroup id) are used alone.

exec_id is globally unique: a hash of the boot id (random per boot, so per host too), the pid
and the start time in CLOCK_BOOTTIME ns (the exec's timestamp, the fork's, or /proc's start
time for processes found at seeding). A new exec of the same pid gets a new exec_id.

The /proc root is a parameter, so the tests run against a fake tree.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from alpha.sensors.decode import KernelIdentity
from alpha.sensors.model import Ancestor, ProcessInfo, Stdio

PROC: Final = Path("/proc")
UNSET_LOGINUID: Final = 0xFFFFFFFF
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MAX_ARGS_TEXT: Final = 4096


def read_boot_id(proc: Path = PROC) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # No boot id (odd container): the host name keeps exec_ids apart across hosts at least.
        return f"noboot-{os.uname().nodename}"


def make_exec_id(boot_id: str, pid: int, start_ns: int) -> str:
    """A globally unique, opaque id of one process image (32 hex chars)."""
    return hashlib.blake2b(f"{boot_id}:{pid}:{start_ns}".encode(), digest_size=16).hexdigest()


# --- cgroups and containers ---------------------------------------------------------------------

_HEX64: Final = r"[0-9a-f]{64}"
# (runtime, pattern on one path component); the monitors (conmon) are not the container.
_CONTAINER_PATTERNS: Final = (
    ("docker", re.compile(rf"^docker-({_HEX64})\.scope$")),
    ("containerd", re.compile(rf"^cri-containerd-({_HEX64})\.scope$")),
    ("crio", re.compile(rf"^crio-({_HEX64})\.scope$")),
    ("podman", re.compile(rf"^libpod-({_HEX64})\.scope$")),
    ("lxc", re.compile(r"^lxc\.payload\.(.+)$")),
)
_PARENT_RUNTIME: Final = {
    "docker": "docker",
    "libpod_parent": "podman",
    "machine.slice": "podman",
    "kubepods": "kubernetes",
    "kubepods.slice": "kubernetes",
    "actions_job": "docker",
    "lxc": "lxc",
}


def container_of(cgroup_paths: Iterable[str]) -> tuple[str, str]:
    """(runtime, container id) from cgroup paths, or ("", "") when on the host.

    Knows docker (`/docker/<id>`, `docker-<id>.scope`), containerd/Kubernetes
    (`cri-containerd-<id>.scope`, `/kubepods/.../<id>`), CRI-O (`crio-<id>.scope`), podman
    (`libpod-<id>.scope`) and LXC (`/lxc/<name>`, `lxc.payload.<name>`); `*-conmon-*` scopes
    are container monitors and are not attributed.
    """
    for path in cgroup_paths:
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts) - 1, -1, -1):
            part = parts[i]
            if "conmon" in part:
                continue
            for runtime, pattern in _CONTAINER_PATTERNS:
                m = pattern.match(part)
                if m:
                    if runtime == "containerd" and any("kubepods" in p for p in parts[:i]):
                        runtime = "kubernetes"
                    return runtime, m.group(1)
            if re.fullmatch(_HEX64, part) and i > 0:
                for ancestor in parts[:i]:
                    runtime = _PARENT_RUNTIME.get(ancestor.split("-")[0], "")
                    runtime = runtime or _PARENT_RUNTIME.get(ancestor, "")
                    if runtime:
                        return runtime, part
                return "container", part
            if i > 0 and parts[i - 1] == "lxc":
                return "lxc", part
    return "", ""


def parse_cgroup_file(text: str) -> list[tuple[str, str]]:
    """Lines of /proc/PID/cgroup as (controllers, path); "" controllers is cgroup v2."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def cgroup_path(lines: list[tuple[str, str]]) -> str:
    """The process's cgroup: the v2 path, or on a hybrid host where v2 says "/", the most
    telling v1 path (name=systemd first)."""
    v2 = next((p for c, p in lines if c == ""), None)
    if v2 is not None and v2 != "/":
        return v2
    v1 = sorted(
        ((0 if c == "name=systemd" else 1, p) for c, p in lines if c and p != "/"),
    )
    if v1:
        return v1[0][1]
    return v2 or ("/" if lines else "")


def find_cgroup2_mount(mountinfo: str) -> str | None:
    """The cgroup2 mount point from /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split(" ")
            if len(fields) > 4:
                return fields[4].replace("\\040", " ")
    return None


class CgroupResolver:
    """cgroup v2 id (the kernel's bpf_get_current_cgroup_id) -> path below the v2 root.

    On cgroup v2 the id is the inode number of the cgroup's directory, so a walk of the
    hierarchy maps ids to paths. A miss rescans, at most every `rescan_s` seconds.
    """

    def __init__(self, root: Path | None, rescan_s: float = 0.05) -> None:
        self._root = root
        self._rescan_s = rescan_s
        self._paths: dict[int, str] = {}
        self._last_scan = -1e9
        self._lock = threading.Lock()

    @classmethod
    def detect(cls, proc: Path = PROC) -> CgroupResolver:
        try:
            mount = find_cgroup2_mount((proc / "self/mountinfo").read_text())
        except OSError:
            mount = None
        return cls(Path(mount) if mount else None)

    @property
    def root(self) -> Path | None:
        return self._root

    def _scan(self) -> None:
        if self._root is None:
            return
        paths: dict[int, str] = {}
        for dirpath, _, _ in os.walk(self._root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = os.path.relpath(dirpath, self._root)
            paths[ino] = "/" if rel == "." else "/" + rel
        self._paths = paths
        self._last_scan = time.monotonic()

    def resolve(self, cgroup_id: int) -> str | None:
        if not cgroup_id or self._root is None:
            return None
        with self._lock:
            path = self._paths.get(cgroup_id)
            if path is None and time.monotonic() - self._last_scan >= self._rescan_s:
                self._scan()
                path = self._paths.get(cgroup_id)
            return path


# --- /proc snapshots ----------------------------------------------------------------------------


def fd_kind(target: str | None) -> str:
    """What an fd points at, from its /proc/PID/fd/N link text; "socket" is refined later."""
    if target is None:
        return "closed"
    if target.startswith("socket:["):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith(("/dev/pts/", "/dev/tty")) or target == "/dev/console":
        return "tty"
    if target.startswith(("anon_inode:", "/dev/")):
        return "other"  # eventfds, /dev/null and other character devices
    return "file"


def _hex_addr(text: str) -> str:
    """An address from /proc/net/tcp{,6}: 32-bit words printed in host byte order."""
    raw = bytes.fromhex(text)
    fixed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(fixed)
    mapped = getattr(addr, "ipv4_mapped", None)  # a v4 peer of a dual-stack socket
    return str(mapped or addr)


def parse_inet_table(text: str) -> dict[int, tuple[str, int]]:
    """socket inode -> (remote address, remote port) from /proc/PID/net/{tcp,udp}{,6}."""
    out: dict[int, tuple[str, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        addr, _, port = fields[2].partition(":")
        try:
            out[int(fields[9])] = (_hex_addr(addr), int(port, 16))
        except ValueError:
            continue
    return out


def parse_unix_table(text: str) -> dict[int, str]:
    """socket inode -> bound path ("" if none) from /proc/PID/net/unix."""
    out: dict[int, str] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 7 and fields[6].isdigit():
            out[int(fields[6])] = fields[7] if len(fields) > 7 else ""
    return out


def resolve_stdio(base: str, targets: list[str | None]) -> tuple[Stdio, Stdio, Stdio]:
    """Stdio descriptors from fd link texts; sockets are looked up in the process's network
    namespace tables (read once, only when a socket is there: the reverse-shell case)."""
    inet: dict[int, tuple[str, int]] | None = None
    unix: dict[int, str] | None = None
    out: list[Stdio] = []
    for target in targets:
        kind = fd_kind(target)
        if kind != "socket":
            path = target if target and kind in ("file", "tty") else ""
            out.append(Stdio(kind, path))
            continue
        assert target is not None
        inode = int(target[len("socket:[") : -1])
        if inet is None:
            inet = {}
            for table in ("tcp", "tcp6", "udp", "udp6"):
                data = _read_all(f"{base}net/{table}", 4 << 20)
                if data:
                    inet.update(parse_inet_table(data.decode("ascii", "replace")))
        if inode in inet:
            address, port = inet[inode]
            out.append(Stdio("inet_socket", "", address, port))
            continue
        if unix is None:
            data = _read_all(f"{base}net/unix", 4 << 20)
            unix = parse_unix_table(data.decode("utf-8", "replace")) if data else {}
        if inode in unix:
            out.append(Stdio("unix_socket", unix[inode]))
        else:
            out.append(Stdio("other"))  # netlink, packet and other socket families
    return out[0], out[1], out[2]


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    pid: int
    ppid: int
    comm: str
    exe: str
    args: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    euid: int
    start_ticks: int  # /proc/PID/stat field 22: clock ticks since boot (0: not read)
    cgroup_lines: tuple[tuple[str, str], ...]
    stdio: tuple[Stdio, Stdio, Stdio]
    auid: int | None = None  # /proc/PID/loginuid; None when unset or unreadable
    tty: str = ""  # from /proc/PID/stat's tty_nr, when the stat file was read

    @property
    def start_ns(self) -> int:
        return self.start_ticks * 1_000_000_000 // _CLK_TCK


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read_all(path: str, limit: int) -> bytes | None:
    """A /proc table read to its end (up to `limit`): seq files such as net/tcp return one
    page per read(2), so a single read would miss every socket after the first ~26."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read(path: str, limit: int = 65536) -> bytes | None:
    """One read of a small /proc file; plain os calls (pathlib and io cost more than the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_stat(text: str) -> tuple[str, int, int]:
    """(comm, ppid, start_ticks) from /proc/PID/stat; comm may hold spaces and parentheses."""
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2 :].split()
    return text[lpar + 1 : rpar], int(rest[1]), int(rest[19])


def parse_stat_tty(text: str) -> str:
    """The controlling terminal from /proc/PID/stat's tty_nr, as ps names it ("" for none)."""
    rest = text[text.rindex(")") + 2 :].split()
    nr = int(rest[4])
    major, minor = (nr >> 8) & 0xFFF, (nr & 0xFF) | ((nr >> 12) & 0xFFF00)
    if nr == 0:
        return ""
    if 136 <= major <= 143:  # Unix98 pty slaves
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    if major == 4:
        return f"ttyS{minor - 64}"
    if major == 5 and minor == 1:
        return "console"
    return f"tty({major},{minor})"


def parse_status(text: str) -> tuple[str, int, int, int, int]:
    """(name, ppid, real uid, real gid, effective uid) from /proc/PID/status."""
    name, ppid, uid, gid, euid = "", -1, -1, -1, -1
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "PPid":
            ppid = int(value)
        elif key == "Uid":
            parts = value.split()
            uid, euid = int(parts[0]), int(parts[1])
        elif key == "Gid":
            gid = int(value.split()[0])
            break  # the fields after Gid are not needed
    return name, ppid, uid, gid, euid


def parse_status_ids(text: str) -> tuple[int, int, int]:
    """(real uid, real gid, effective uid) from /proc/PID/status."""
    _, _, uid, gid, euid = parse_status(text)
    return uid, gid, euid


def read_snapshot(
    pid: int, proc: Path = PROC, *, args: bool = True, start: bool = True
) -> ProcSnapshot | None:
    """What /proc says about a process now, or None when it is gone.

    An exec event needs neither the start time (the event has its own) nor, when the kernel
    sent them, the arguments: `start=False` / `args=False` skip those reads (start_ticks 0)."""
    base = f"{proc}/{pid}/"
    status = _read(base + "status", 4096)
    if status is None:
        return None
    try:
        comm, ppid, uid, gid, euid = parse_status(status.decode("utf-8", "backslashreplace"))
        start_ticks = 0
        tty = ""
        if start:
            stat = _read(base + "stat")
            if stat is None:
                return None
            stat_text = stat.decode("utf-8", "backslashreplace")
            comm, ppid, start_ticks = parse_stat(stat_text)
            tty = parse_stat_tty(stat_text)
        loginuid = _read(base + "loginuid", 16)
        auid = int(loginuid) if loginuid else None
    except (ValueError, IndexError):
        return None
    argv: tuple[str, ...] = ()
    if args:
        raw = (_read(base + "cmdline", _MAX_ARGS_TEXT) or b"")[:_MAX_ARGS_TEXT]
        argv = tuple(a.decode("utf-8", "backslashreplace") for a in raw.split(b"\0")[:-1])
    cgroup = _read(base + "cgroup")
    lines = tuple(parse_cgroup_file(cgroup.decode("utf-8", "backslashreplace"))) if cgroup else ()
    return ProcSnapshot(
        pid=pid,
        ppid=ppid,
        comm=comm,
        exe=_readlink(base + "exe") or "",
        args=argv,
        cwd=_readlink(base + "cwd") or "",
        uid=uid,
        gid=gid,
        euid=euid,
        start_ticks=start_ticks,
        cgroup_lines=lines,
        stdio=resolve_stdio(base, [_readlink(f"{base}fd/{n}") for n in range(3)]),
        auid=None if auid == UNSET_LOGINUID else auid,
        tty=tty,
    )


def read_exec_extras(pid: int, proc: Path = PROC, *, exe: bool = False) -> ProcSnapshot | None:
    """The little /proc adds to the kernel's identity at exec: the working directory and what
    fds 0-2 name (the kernel gave their kinds), and the exe only when the kernel's walk was
    cut. A third of read_snapshot's cost (measured 17 us against 55 us). None: already gone."""
    base = f"{proc}/{pid}/"
    cwd = _readlink(base + "cwd")
    if cwd is None:
        return None
    return ProcSnapshot(
        pid=pid,
        ppid=0,
        comm="",
        exe=(_readlink(base + "exe") or "") if exe else "",
        args=(),
        cwd=cwd,
        uid=0,
        gid=0,
        euid=0,
        start_ticks=0,
        cgroup_lines=(),
        stdio=resolve_stdio(base, [_readlink(f"{base}fd/{n}") for n in range(3)]),
    )


# --- the table ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    info: ProcessInfo
    cgroup_id: int | None  # the kernel's v2 id last seen; None when only /proc told us


class ProcessTable:
    """Thread-safe. `info`, `fork`, `exec` and `exit` return the `ProcessInfo` snapshot to
    attach to an observation; it is immutable and shared until the process changes."""

    def __init__(
        self,
        boot_id: str,
        *,
        proc: Path = PROC,
        ancestry_depth: int = 8,
        cgroups: CgroupResolver | None = None,
        max_entries: int = 65536,
    ) -> None:
        self.boot_id = boot_id
        self._proc = proc
        self._depth = ancestry_depth
        self._cgroups = cgroups or CgroupResolver(None)
        self._max = max_entries
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: int) -> bool:
        return pid in self._entries

    # --- building entries

    def _ancestry(self, parent: ProcessInfo | None) -> tuple[Ancestor, ...]:
        if parent is None or self._depth == 0:
            return ()
        head = Ancestor(parent.exec_id, parent.pid, parent.comm, parent.exe, parent.args)
        return (head, *parent.ancestry)[: self._depth]

    def _from_snapshot(self, snap: ProcSnapshot) -> ProcessInfo:
        parent = self._entries.get(snap.ppid)
        runtime, cid = container_of(p for _, p in snap.cgroup_lines)
        return ProcessInfo(
            pid=snap.pid,
            ppid=snap.ppid,
            exec_id=make_exec_id(self.boot_id, snap.pid, snap.start_ns),
            parent_exec_id=parent.info.exec_id if parent else "",
            comm=snap.comm,
            exe=snap.exe,
            args=snap.args,
            cwd=snap.cwd,
            uid=snap.uid,
            gid=snap.gid,
            euid=snap.euid,
            start_boot_ns=snap.start_ns,
            cgroup=cgroup_path(list(snap.cgroup_lines)),
            container_id=cid,
            container_runtime=runtime,
            ancestry=self._ancestry(parent.info if parent else None),
            auid=snap.auid,
            tty=snap.tty,
        )

    def seed(self) -> int:
        """Load every live process, parents before children. Returns how many."""
        snaps: dict[int, ProcSnapshot] = {}
        try:
            names = os.listdir(self._proc)
        except OSError:
            return 0
        for name in names:
            if name.isdigit():
                snap = read_snapshot(int(name), self._proc)
                if snap is not None:
                    snaps[snap.pid] = snap
        with self._lock:
            done: set[int] = set()

            def add(pid: int, depth: int = 0) -> None:
                if pid in done or pid not in snaps:
                    return
                done.add(pid)
                ppid = snaps[pid].ppid
                if depth < 512:  # pid cycles cannot happen; the bound is only a guard
                    add(ppid, depth + 1)
                self._entries[pid] = _Entry(self._from_snapshot(snaps[pid]), None)

            for pid in sorted(snaps):
                add(pid)
        return len(snaps)

    def _cgroup(self, cgroup_id: int, lines: tuple[tuple[str, str], ...]) -> tuple[str, str, str]:
        """(path, runtime, container id) from /proc lines when read, else the kernel id."""
        if lines:
            runtime, cid = container_of(p for _, p in lines)
            return cgroup_path(list(lines)), runtime, cid
        path = self._cgroups.resolve(cgroup_id) or ""
        runtime, cid = container_of([path])
        return path, runtime, cid

    def _lookup(self, pid: int) -> _Entry | None:
        entry = self._entries.get(pid)
        if entry is None:
            snap = read_snapshot(pid, self._proc)
            if snap is None:
                return None
            entry = _Entry(self._from_snapshot(snap), None)
            self._put(pid, entry)
        return entry

    def _put(self, pid: int, entry: _Entry) -> None:
        self._entries[pid] = entry
        if len(self._entries) > self._max:
            self._sweep()

    def _sweep(self) -> None:
        """Forget processes whose exit was never seen (lost events, or found after the fact)."""
        for pid in list(self._entries):
            if not os.path.exists(f"{self._proc}/{pid}"):
                del self._entries[pid]
        if len(self._entries) > self._max:  # all alive: grow, rather than sweep on every insert
            self._max = 2 * len(self._entries)

    # --- events

    def info(self, pid: int, cgroup_id: int = 0) -> ProcessInfo | None:
        """The current snapshot of a process, loading it from /proc when unknown. A kernel
        cgroup id that differs from the one last seen means the process moved: re-resolve."""
        with self._lock:
            entry = self._lookup(pid)
            if entry is None:
                return None
            if cgroup_id and entry.cgroup_id != cgroup_id:
                if entry.cgroup_id is not None:
                    path = self._cgroups.resolve(cgroup_id)
                    if path is not None:
                        runtime, cid = container_of([path])
                        entry.info = replace(
                            entry.info, cgroup=path, container_id=cid, container_runtime=runtime
                        )
                entry.cgroup_id = cgroup_id
            return entry.info

    def known(self, pid: int) -> ProcessInfo | None:
        """The table's entry, without reading /proc for a process it does not know."""
        with self._lock:
            entry = self._entries.get(pid)
            return entry.info if entry else None

    def fork(self, parent_pid: int, child_pid: int, boot_ns: int) -> ProcessInfo | None:
        with self._lock:
            parent = self._lookup(parent_pid)
            if parent is None:
                return None
            p = parent.info
            child = replace(
                p,
                pid=child_pid,
                ppid=parent_pid,
                exec_id=make_exec_id(self.boot_id, child_pid, boot_ns),
                parent_exec_id=p.exec_id,
                start_boot_ns=boot_ns,
                ancestry=self._ancestry(p),
            )
            self._put(child_pid, _Entry(child, parent.cgroup_id))
            return child

    def exec(
        self,
        pid: int,
        boot_ns: int,
        *,
        filename: str,
        args: tuple[str, ...] | None,
        uid: int,
        gid: int,
        comm: str,
        cgroup_id: int = 0,
        snapshot: ProcSnapshot | None = None,
        identity: KernelIdentity | None = None,
    ) -> tuple[ProcessInfo, ProcSnapshot | None]:
        """A new image in `pid`. `args` None: unknown (taken from /proc when possible).
        /proc is read here unless the caller passes the `snapshot` it just read.

        `identity` is what the kernel read from the task at exec: it wins over /proc, which a
        process that already exited no longer has, and which may already show a later exec."""
        if snapshot is None and identity is not None and args is not None:
            snapshot = read_exec_extras(pid, self._proc, exe=not identity.exe_complete)
        elif snapshot is None:
            snapshot = read_snapshot(pid, self._proc, args=args is None, start=False)
        snap = snapshot
        with self._lock:
            old = self._entries.get(pid)
            if old is not None:
                ppid, parent_exec_id = old.info.ppid, old.info.parent_exec_id
            else:
                ppid = identity.ppid if identity else (snap.ppid if snap else 0)
                parent_entry = self._entries.get(ppid)
                parent_exec_id = parent_entry.info.exec_id if parent_entry else ""
            parent = self._entries.get(ppid)
            # A forked child keeps the ancestry of its fork: the parent may have exec'd since.
            if old is not None:
                ancestry = old.info.ancestry
            else:
                ancestry = self._ancestry(parent.info if parent else None)
            cgroup, runtime, cid = self._cgroup(cgroup_id, snap.cgroup_lines if snap else ())
            if args is None:
                args = snap.args if snap else ()
            if identity is not None and identity.exe and (identity.exe_complete or not snap):
                exe = identity.exe
            else:
                exe = snap.exe if snap and snap.exe else filename
            cwd = snap.cwd if snap else (old.info.cwd if old else "")
            if identity is not None:
                euid: int | None = identity.euid
                egid: int | None = identity.egid
                auid, tty, source = identity.auid, identity.tty, "kernel"
            else:
                euid, egid = (snap.euid if snap else None), None
                auid = snap.auid if snap else (old.info.auid if old else None)
                tty = old.info.tty if old else ""
                source = "proc"
            info = ProcessInfo(
                pid=pid,
                ppid=ppid,
                exec_id=make_exec_id(self.boot_id, pid, boot_ns),
                parent_exec_id=parent_exec_id,
                comm=comm,
                exe=exe,
                args=args,
                cwd=cwd,
                uid=uid,
                gid=gid,
                euid=euid,
                start_boot_ns=boot_ns,
                cgroup=cgroup,
                container_id=cid,
                container_runtime=runtime,
                ancestry=ancestry,
                egid=egid,
                auid=auid,
                tty=tty,
                identity=source,
            )
            self._put(pid, _Entry(info, cgroup_id or None))
            return info, snap

    def set_ids(self, pid: int, uid: int | None, euid: int | None) -> None:
        """A successful setuid-family call changed the ids (None: unchanged)."""
        with self._lock:
            entry = self._entries.get(pid)
            if entry is None:
                return
            info = entry.info
            entry.info = replace(
                info,
                uid=info.uid if uid is None else uid,
                euid=info.euid if euid is None else euid,
            )

    def exit(self, pid: int) -> ProcessInfo | None:
        with self._lock:
            entry = self._entries.pop(pid, None)
            return entry.info if entry else None
