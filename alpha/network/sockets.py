"""The host's TCP and UDP sockets through sock_diag netlink, mapped to processes.

One `SocketPoller.poll()` dumps every inet socket of the network namespace (TCP with `tcp_info`,
for its byte counters) and tells, against the previous poll:

- the listening sockets that are new (TCP LISTEN, and UDP sockets bound but not connected);
- the connections that are new (TCP sockets first seen established or connecting);
- every TCP socket's byte counters (`bytes_acked` sent, `bytes_received`), for the transfer
  detector, which takes the deltas.

sock_diag gives the socket's inode, not its process: owners are found by reading the
`/proc/PID/fd` links (`socket:[INODE]`), only for sockets not seen before (a socket's owner is
cached for its life), stopping as soon as all are found.

What polling cannot see: a socket that opens and closes between two polls (a refused connect,
a quick transfer), and sockets of other network namespaces. Those are the eBPF sensor's: its
connect/accept observations feed the same detectors, and its record of every TCP socket's end
(the move to TCP_CLOSE, with the kernel's final byte counters) gives the transfer detector
what no poll saw (`TransferDetector.on_close`). The sock_diag destroy broadcast is no help,
since it reports a TCP socket after it was disconnected, with its addresses and counters
already cleared (checked on this kernel).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from alpha.sensors.model import ProcessInfo
from mesh.errors import UnavailableError

__all__ = [
    "Endpoint",
    "NetlinkDiag",
    "Owner",
    "PollResult",
    "PyrouteDiag",
    "SocketInfo",
    "SocketPoller",
    "SocketSnapshot",
    "SocketUnavailableError",
    "dump_sockets",
    "ephemeral_port_range",
    "find_owners",
    "is_listener",
    "listener_key",
    "parse_diag_messages",
]

PROC: Final = Path("/proc")
# TCP states as the kernel numbers them (include/net/tcp_states.h).
TCP_STATES: Final = {
    1: "established",
    2: "syn_sent",
    3: "syn_recv",
    4: "fin_wait1",
    5: "fin_wait2",
    6: "time_wait",
    7: "close",
    8: "close_wait",
    9: "last_ack",
    10: "listen",
    11: "closing",
    12: "new_syn_recv",
}
_ALL_STATES: Final = (1 << 13) - 1
_INET_DIAG_INFO_EXT: Final = 1 << (2 - 1)  # request INET_DIAG_INFO (attribute 2): tcp_info
_CONNECTION_STATES: Final = frozenset({"established", "syn_sent", "close_wait"})


class SocketUnavailableError(UnavailableError):
    """sock_diag cannot be used here (pyroute2 missing, netlink refused)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int

    def __str__(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """One socket as sock_diag reports it. `cookie` is unique for the socket's life."""

    cookie: int
    protocol: str  # tcp, udp
    family: str  # inet, inet6
    state: str  # TCP_STATES names; UDP: "close" unconnected, "established" connected
    local: Endpoint
    remote: Endpoint
    inode: int  # 0 once no file refers to it (orphaned, time-wait)
    uid: int
    bytes_acked: int = 0  # TCP: bytes sent and acknowledged by the peer
    bytes_received: int = 0  # TCP


@dataclass(frozen=True, slots=True)
class Owner:
    """A process holding a socket, as /proc showed it (or the sensor's process table)."""

    pid: int
    comm: str = ""
    exe: str = ""
    uid: int | None = None
    info: ProcessInfo | None = None  # the eBPF process table's view, when it knows the pid

    @property
    def key(self) -> str:
        """Identity for per-process accounting: the exec id survives pid reuse."""
        return self.info.exec_id if self.info is not None else f"pid:{self.pid}"


@dataclass(frozen=True, slots=True)
class SocketSnapshot:
    time_ns: int
    sockets: tuple[SocketInfo, ...]
    owners: Mapping[int, tuple[Owner, ...]]  # inode -> processes, for the sockets resolved
    took_ns: int  # the dump and the owner lookup

    def owner_of(self, sock: SocketInfo) -> Owner | None:
        found = self.owners.get(sock.inode) if sock.inode else None
        return found[0] if found else None


@dataclass(frozen=True, slots=True)
class PollResult:
    snapshot: SocketSnapshot
    new_listeners: tuple[SocketInfo, ...]
    new_connections: tuple[SocketInfo, ...]
    baseline: bool  # the first poll: nothing in it is "new", it is what was there


def is_listener(sock: SocketInfo, ephemeral: tuple[int, int] | None = None) -> bool:
    """A TCP listener, or a UDP socket bound and not connected (outside `ephemeral` ports)."""
    if sock.protocol == "tcp":
        return sock.state == "listen"
    if sock.remote.port != 0 or sock.local.port == 0:
        return False
    # An unconnected UDP socket in the ephemeral range is a client's (a resolver's) socket.
    return ephemeral is None or not ephemeral[0] <= sock.local.port <= ephemeral[1]


def listener_key(sock: SocketInfo) -> tuple[str, str, int]:
    """What identifies a listening port: a restart of its service between polls is not new."""
    return (sock.protocol, sock.local.address, sock.local.port)


def ephemeral_port_range(proc: Path = PROC) -> tuple[int, int]:
    try:
        low, high = (proc / "sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return (32768, 60999)  # the kernel's default


# --- sock_diag ----------------------------------------------------------------------------------
#
# Two backends read the same kernel dump. `NetlinkDiag` (the default) speaks sock_diag over a
# stdlib AF_NETLINK socket and unpacks the kernel's UAPI structs with `struct`: about 3 us per
# socket. `PyrouteDiag` asks pyroute2's DiagSocket: pyroute2 0.9 runs an asyncio loop turn per
# netlink message, about 65 us per socket here (2,000 sockets: 200 ms per poll instead of 10),
# so it is kept as the reference the tests check the default against, and as an option.

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_NLM_F_REQUEST: Final = 0x1
_NLM_F_DUMP: Final = 0x300
_NLMSG_HDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48 bytes,
# all zero: no filter).
_REQ: Final = struct.Struct("=BBBxI48x")
# struct inet_diag_msg: family, state, timer, retrans; sockid: sport, dport (big endian),
# src[16], dst[16], if, cookie (two u32, host order); expires, rqueue, wqueue, uid, inode.
_MSG: Final = struct.Struct("=BBBB2s2s16s16sIQIIIII")
_PORT: Final = struct.Struct(">H")
_RTA: Final = struct.Struct("=HH")
_INET_DIAG_INFO: Final = 2
# struct tcp_info: bytes_acked and bytes_received are the u64s at offsets 120 and 128 (Linux
# 4.1+); a shorter tcp_info (older kernel) leaves them 0.
_TCP_BYTES: Final = struct.Struct("=QQ")
_TCP_BYTES_AT: Final = 120


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_diag_messages(
    data: bytes, protocol: str, family: str, out: list[SocketInfo]
) -> tuple[bool, int]:
    """Unpack one recv()'d buffer of sock_diag replies into `out`: (done, errno or 0)."""
    fam = socket.AF_INET if family == "inet" else socket.AF_INET6
    addr_len = 4 if fam == socket.AF_INET else 16
    off, n = 0, len(data)
    while off + _NLMSG_HDR.size <= n:
        length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, off)
        if length < _NLMSG_HDR.size or off + length > n:
            raise SocketUnavailableError("sock_diag: truncated netlink message")
        body = off + _NLMSG_HDR.size
        if kind == _NLMSG_DONE:
            return True, 0
        if kind == _NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, body)
            return True, -err
        if kind == SOCK_DIAG_BY_FAMILY and length - _NLMSG_HDR.size >= _MSG.size:
            (
                _fam, state, _timer, _retrans, sport, dport, src, dst, _if, cookie,
                _expires, _rq, _wq, uid, inode,
            ) = _MSG.unpack_from(data, body)  # fmt: skip
            acked = received = 0
            attr, end = body + _MSG.size, off + length
            while attr + _RTA.size <= end:
                alen, atype = _RTA.unpack_from(data, attr)
                if alen < _RTA.size:
                    break
                if atype == _INET_DIAG_INFO and alen >= _RTA.size + _TCP_BYTES_AT + 16:
                    acked, received = _TCP_BYTES.unpack_from(data, attr + _RTA.size + _TCP_BYTES_AT)
                attr += _align(alen)
            out.append(
                SocketInfo(
                    cookie=cookie,
                    protocol=protocol,
                    family=family,
                    state=TCP_STATES.get(state, "unknown"),
                    local=Endpoint(socket.inet_ntop(fam, src[:addr_len]), _PORT.unpack(sport)[0]),
                    remote=Endpoint(socket.inet_ntop(fam, dst[:addr_len]), _PORT.unpack(dport)[0]),
                    inode=inode,
                    uid=uid,
                    bytes_acked=acked,
                    bytes_received=received,
                )
            )
        off += _align(length)
    return False, 0


class NetlinkDiag:
    """sock_diag over a plain netlink socket (the default backend; see above)."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
            )
            self._sock.bind((0, 0))
        except OSError as exc:
            raise SocketUnavailableError(f"sock_diag netlink socket: {exc}") from exc
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, family: str, protocol: str) -> list[SocketInfo]:
        fam = socket.AF_INET if family == "inet" else socket.AF_INET6
        proto = socket.IPPROTO_TCP if protocol == "tcp" else socket.IPPROTO_UDP
        ext = _INET_DIAG_INFO_EXT if protocol == "tcp" else 0
        self._seq += 1
        body = _REQ.pack(fam, proto, ext, _ALL_STATES)
        header = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(body),
            SOCK_DIAG_BY_FAMILY,
            _NLM_F_REQUEST | _NLM_F_DUMP,
            self._seq,
            0,
        )
        self._sock.send(header + body)
        out: list[SocketInfo] = []
        while True:
            data = self._sock.recv(1 << 20)
            done, err = parse_diag_messages(data, protocol, family, out)
            if err:
                raise SocketUnavailableError(f"sock_diag dump: {os.strerror(err)}")
            if done:
                return out


class PyrouteDiag:
    """sock_diag through pyroute2's DiagSocket (the reference backend; see above)."""

    def __init__(self) -> None:
        try:
            from pyroute2 import DiagSocket  # optional: the alpha extra
        except ImportError as exc:
            raise SocketUnavailableError(
                "pyroute2 is not installed (pip install 'qsc[alpha]')"
            ) from exc
        try:
            self._diag = DiagSocket()
            self._diag.bind()
        except OSError as exc:
            raise SocketUnavailableError(f"sock_diag netlink socket: {exc}") from exc

    def close(self) -> None:
        self._diag.close()

    def dump(self, family: str, protocol: str) -> list[SocketInfo]:
        msgs = self._diag.get_sock_stats(
            family=socket.AF_INET if family == "inet" else socket.AF_INET6,
            protocol=socket.IPPROTO_TCP if protocol == "tcp" else socket.IPPROTO_UDP,
            states=_ALL_STATES,
            extensions=_INET_DIAG_INFO_EXT if protocol == "tcp" else 0,
        )
        out = []
        for m in msgs:
            info = m.get_attr("INET_DIAG_INFO") if protocol == "tcp" else None
            out.append(
                SocketInfo(
                    cookie=int(m["idiag_cookie"]),
                    protocol=protocol,
                    family=family,
                    state=TCP_STATES.get(int(m["idiag_state"]), "unknown"),
                    local=Endpoint(str(m["idiag_src"]), int(m["idiag_sport"])),
                    remote=Endpoint(str(m["idiag_dst"]), int(m["idiag_dport"])),
                    inode=int(m["idiag_inode"]),
                    uid=int(m["idiag_uid"]),
                    bytes_acked=int(info.get("tcpi_bytes_acked") or 0) if info else 0,
                    bytes_received=int(info.get("tcpi_bytes_received") or 0) if info else 0,
                )
            )
        return out


Backend = NetlinkDiag | PyrouteDiag


def dump_sockets(diag: Backend, protocols: Collection[str] = ("tcp", "udp")) -> list[SocketInfo]:
    """Every inet socket of `protocols`, IPv4 and IPv6."""
    out: list[SocketInfo] = []
    for family in ("inet", "inet6"):
        for protocol in ("tcp", "udp"):
            if protocol in protocols:
                out.extend(diag.dump(family, protocol))
    return out


# --- owners ---------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _owner(proc: Path, pid: int, info: Callable[[int], ProcessInfo | None] | None) -> Owner:
    known = info(pid) if info is not None else None
    if known is not None:
        return Owner(pid, known.comm, known.exe, known.uid, known)
    base = proc / str(pid)
    try:
        exe = os.readlink(base / "exe")
    except OSError:
        exe = ""
    uid: int | None = None
    for line in _read_text(base / "status").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return Owner(pid, _read_text(base / "comm").strip(), exe, uid)


def find_owners(
    inodes: Iterable[int],
    *,
    proc: Path = PROC,
    process_info: Callable[[int], ProcessInfo | None] | None = None,
) -> dict[int, tuple[Owner, ...]]:
    """inode -> the processes holding it, by reading /proc/*/fd; stops when all are found.

    Every holder is listed (a listening socket is often shared by a parent and its workers),
    lowest pid first. Processes that vanish while read are skipped.
    """
    wanted = set(inodes)
    wanted.discard(0)
    holders: dict[int, list[int]] = {}
    if not wanted:
        return {}
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return {}
    complete: set[int] = set()
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            inode = int(target[8:-1])
            if inode in wanted:
                pids_of = holders.setdefault(inode, [])
                if not pids_of or pids_of[-1] != pid:
                    pids_of.append(pid)
                complete.add(inode)
        # Shared sockets have further holders; but once every inode has one, a first owner
        # for each is what attribution needs, and the scan of all /proc is the cost to avoid.
        if len(complete) == len(wanted):
            break
    cache: dict[int, Owner] = {}
    out: dict[int, tuple[Owner, ...]] = {}
    for inode, pid_list in holders.items():
        owners = []
        for pid in pid_list:
            if pid not in cache:
                cache[pid] = _owner(proc, pid, process_info)
            owners.append(cache[pid])
        out[inode] = tuple(owners)
    return out


# --- the poller -----------------------------------------------------------------------------------


class SocketPoller:
    """Socket snapshots, diffed against the previous one. One thread polls (not thread-safe).

    `process_info` is the eBPF process table's lookup (`sensor.table.info`) when a sensor runs:
    owners then carry exec ids and ancestry; else /proc alone names them.
    """

    def __init__(
        self,
        *,
        protocols: Collection[str] = ("tcp", "udp"),
        backend: Literal["netlink", "pyroute2"] = "netlink",
        proc: Path = PROC,
        process_info: Callable[[int], ProcessInfo | None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        max_cached_owners: int = 65536,
    ) -> None:
        self.protocols = tuple(protocols)
        self.backend = backend
        self._proc = proc
        self._process_info = process_info
        self._clock = clock
        self._max_cached = max_cached_owners
        self._diag: Backend | None = None
        self._cookies: set[int] = set()
        self._listeners: set[tuple[str, str, int]] = set()
        self._owners: dict[int, tuple[Owner, ...]] = {}  # inode -> owners, while it lives
        self._polls = 0
        self.ephemeral = ephemeral_port_range(proc)

    def _socket(self) -> Backend:
        if self._diag is None:
            self._diag = NetlinkDiag() if self.backend == "netlink" else PyrouteDiag()
        return self._diag

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def __enter__(self) -> SocketPoller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def snapshot(self, want_owners: Callable[[SocketInfo], bool] | None = None) -> SocketSnapshot:
        """Dump the sockets; resolve the owners of those `want_owners` selects (default: all
        with an inode). Owners found before are reused while the inode lives."""
        start = time.monotonic_ns()
        now = self._clock()
        try:
            sockets = dump_sockets(self._socket(), self.protocols)
        except (OSError, SocketUnavailableError) as exc:
            self.close()  # a dump cut short leaves replies queued: start the next one afresh
            if isinstance(exc, SocketUnavailableError):
                raise
            raise SocketUnavailableError(f"sock_diag dump failed: {exc}") from exc
        live = {s.inode for s in sockets if s.inode}
        # Forget the owners of sockets that are gone: an inode number can be reused.
        for inode in [i for i in self._owners if i not in live]:
            del self._owners[inode]
        wanted = {
            s.inode
            for s in sockets
            if s.inode and s.inode not in self._owners and (want_owners is None or want_owners(s))
        }
        if wanted:
            found = find_owners(wanted, proc=self._proc, process_info=self._process_info)
            # Remember misses too (kernel sockets have an inode and no fd): else each poll
            # would scan all of /proc for them again.
            for inode in wanted - found.keys():
                found[inode] = ()
            if len(self._owners) + len(found) <= self._max_cached:
                self._owners.update(found)
            owners: Mapping[int, tuple[Owner, ...]] = {**self._owners, **found}
        else:
            owners = dict(self._owners)
        return SocketSnapshot(now, tuple(sockets), owners, time.monotonic_ns() - start)

    def poll(self) -> PollResult:
        """A snapshot and what is new in it since the previous poll."""
        baseline = self._polls == 0
        self._polls += 1
        snap = self.snapshot(self._interesting)
        cookies = {s.cookie for s in snap.sockets}
        listeners = [s for s in snap.sockets if is_listener(s, self.ephemeral)]
        keys = {listener_key(s) for s in listeners}
        if baseline:
            new_listeners: list[SocketInfo] = []
            new_connections: list[SocketInfo] = []
        else:
            new_listeners = [s for s in listeners if listener_key(s) not in self._listeners]
            new_connections = [
                s
                for s in snap.sockets
                if s.protocol == "tcp"
                and s.state in _CONNECTION_STATES
                and s.cookie not in self._cookies
            ]
        self._cookies = cookies
        self._listeners = keys
        return PollResult(snap, tuple(new_listeners), tuple(new_connections), baseline)

    def _interesting(self, sock: SocketInfo) -> bool:
        # Owners matter for listeners, connections (scans, blocklists) and byte counters;
        # not for time-wait and other sockets without a file.
        return sock.inode != 0 and (sock.protocol == "tcp" or is_listener(sock, self.ephemeral))
