"""Network detections: blocklisted peers, port scans, large transfers, new listening ports.

Pure: no sockets, no /proc, no clock of its own (every input carries its time, and the socket
poller's results carry the snapshot's). Inputs come from two places:

- the eBPF sensor's connect/accept observations (`attempt_from_observation`): every attempt,
  refused ones included, with its process; the source for outbound scans;
- the socket poller (`NetworkDetector.on_poll`): new listeners, connections that lived across
  a poll (inbound ones give the local port hit, which accept(2) does not report) and the byte
  counters of every TCP socket.

Scans are counted per actor (outbound: the process; inbound: the remote address) over a
sliding window: many ports on one host is vertical, many hosts on one port horizontal, both a
block (the shape is the one seen when the first threshold is reached). An actor is reported
once per window, so a long scan makes one event per window.

Transfers: per-socket deltas of `bytes_acked` (out) and `bytes_received` (in), summed per
process over a sliding window; a process is reported once per window when its sum crosses
the threshold. Sockets already open at the first poll only count what they move afterwards.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from alpha.network.sockets import Endpoint, Owner, PollResult, SocketInfo
from alpha.sensors.model import Kind, NetDetail, Observation, TcpCloseDetail
from mesh.errors import ConfigError

__all__ = [
    "Attempt",
    "Blocklist",
    "BlocklistMatcher",
    "ConnectionFinding",
    "Direction",
    "Finding",
    "ListenFinding",
    "NetworkDetectConfig",
    "NetworkDetector",
    "ScanDetector",
    "ScanFinding",
    "ScanPattern",
    "TransferDetector",
    "TransferFinding",
    "actor_of_observation",
    "attempt_from_observation",
    "normalize_address",
]

_NS: Final = 1_000_000_000
_ECONNREFUSED: Final = 111
_SAMPLE: Final = 16
NO_ENDPOINT: Final = Endpoint("", 0)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class ScanPattern(enum.StrEnum):
    VERTICAL = "vertical"
    HORIZONTAL = "horizontal"
    BLOCK = "block"


def normalize_address(text: str) -> str:
    """The canonical text of an IP (IPv4-mapped IPv6 as IPv4), or `text` when it is no IP."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _parse_address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(normalize_address(text))
    except ValueError:
        return None


def _networks(name: str, values: Iterable[str]) -> tuple[Network, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(name, f"{value!r}: not an IP address or CIDR network") from None
    return tuple(out)


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocklist:
    """A named set of remote peers to report (`[[network.blocklists]]`).

    A peer matches when its address is in one of `networks` (CIDRs or single addresses) and
    its port in `ports`; an empty side matches anything, so ports alone name a list of ports
    (mining pools' 3333, 4444...) and networks alone a list of addresses.
    """

    name: str
    networks: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ConfigError("name", "1 to 64 characters")
        if not self.networks and not self.ports:
            raise ConfigError(self.name, "a blocklist needs networks, ports or both")
        _networks(f"{self.name}.networks", self.networks)
        for port in self.ports:
            if not 1 <= port <= 65535:
                raise ConfigError(f"{self.name}.ports", f"{port}: not a port")


@dataclass(frozen=True)
class NetworkDetectConfig:
    """The `[network]` section (env: `QSC_ALPHA_NETWORK__<FIELD>`)."""

    poll_interval: timedelta = timedelta(seconds=1)
    blocklists: tuple[Blocklist, ...] = ()
    # True when the eBPF sensor's connect/accept observations reach `on_observation` and its
    # network events are annotated by `BlocklistMatcher`: polling then leaves blocklists and
    # outbound scans to them (else it would report and count the same connections twice).
    ebpf_connections: bool = False
    report_listeners: bool = True
    scan_window: timedelta = timedelta(seconds=60)
    scan_ports: int = 20  # distinct ports on one host in the window: vertical
    scan_hosts: int = 30  # distinct hosts on one port in the window: horizontal
    scan_ignore_networks: tuple[str, ...] = ()  # peers never counted (monitoring, a proxy)
    scan_max_actors: int = 4096
    scan_max_attempts_per_actor: int = 4096
    transfer_window: timedelta = timedelta(minutes=5)
    transfer_outbound_bytes: int = 100 * 1024 * 1024  # 0 turns outbound reporting off
    transfer_inbound_bytes: int = 0  # 0 turns inbound reporting off
    # Loopback is not "off the host"; set () to count it (the tests do).
    transfer_ignore_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    transfer_max_processes: int = 4096

    def __post_init__(self) -> None:
        if not timedelta(milliseconds=50) <= self.poll_interval <= timedelta(minutes=10):
            raise ConfigError("poll_interval", "between 50ms and 10m")
        names = [b.name for b in self.blocklists]
        if len(set(names)) != len(names):
            raise ConfigError("blocklists", "names must be unique")
        for name in ("scan_window", "transfer_window"):
            if not timedelta(seconds=1) <= getattr(self, name) <= timedelta(days=1):
                raise ConfigError(name, "between 1s and 1d")
        for name in (
            "scan_ports",
            "scan_hosts",
            "scan_max_actors",
            "scan_max_attempts_per_actor",
            "transfer_max_processes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        for name in ("transfer_outbound_bytes", "transfer_inbound_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "0 (off) or more")
        _networks("scan_ignore_networks", self.scan_ignore_networks)
        _networks("transfer_ignore_networks", self.transfer_ignore_networks)


# --- inputs and findings -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection attempt, either way. `actor` is the process (outbound) when known."""

    time_ns: int
    direction: Direction
    remote: Endpoint  # outbound: the destination; inbound: the peer
    local: Endpoint = NO_ENDPOINT  # inbound: the address and port that were hit
    actor: Owner | None = None
    result: int | None = None  # the syscall's return (-111 refused), when known


@dataclass(frozen=True, slots=True)
class ConnectionFinding:
    """A connection (or a new listening socket, `operation="listen"`) worth an event."""

    time_ns: int
    operation: str  # connect, accept, listen
    protocol: str
    family: str
    local: Endpoint
    remote: Endpoint
    actor: Owner | None
    blocklists: tuple[str, ...] = ()
    result: int = 0


# A new listening port is a connection finding with operation "listen".
ListenFinding = ConnectionFinding


@dataclass(frozen=True, slots=True)
class ScanFinding:
    time_ns: int
    direction: Direction
    pattern: ScanPattern
    actor: Owner | None  # outbound: the scanning process
    source_address: str  # inbound: the scanner
    distinct_ports: int
    distinct_hosts: int
    attempts: int
    refused: int  # attempts known to have been refused (closed ports)
    window: timedelta
    sample_ports: tuple[int, ...]
    sample_addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransferFinding:
    time_ns: int
    direction: Direction
    actor: Owner | None
    bytes: int
    threshold_bytes: int
    window: timedelta
    connections: int
    top_remote: Endpoint
    top_remote_bytes: int


Finding = ConnectionFinding | ScanFinding | TransferFinding


# --- blocklists ----------------------------------------------------------------------------------


class BlocklistMatcher:
    """Which configured blocklists a remote peer is on. Also for the eBPF event converter."""

    def __init__(self, blocklists: Sequence[Blocklist]) -> None:
        self._lists = [
            (b.name, _networks(b.name, b.networks), frozenset(b.ports)) for b in blocklists
        ]

    def __bool__(self) -> bool:
        return bool(self._lists)

    def match(self, address: str, port: int) -> tuple[str, ...]:
        if not self._lists:
            return ()
        addr = _parse_address(address)
        hits = []
        for name, nets, ports in self._lists:
            if ports and port not in ports:
                continue
            if nets and (addr is None or not any(addr in n for n in nets)):
                continue
            hits.append(name)
        return tuple(hits)


def _in_any(address: str, nets: tuple[Network, ...]) -> bool:
    if not nets:
        return False
    addr = _parse_address(address)
    return addr is not None and any(addr in n for n in nets)


# --- scans ---------------------------------------------------------------------------------------


@dataclass
class _ScanState:
    attempts: deque[tuple[int, str, int, bool]] = field(default_factory=deque)
    ports_by_host: dict[str, Counter[int]] = field(default_factory=dict)
    hosts_by_port: dict[int, Counter[str]] = field(default_factory=dict)
    refused: int = 0
    reported_ns: int | None = None
    last_ns: int = 0
    actor: Owner | None = None

    def add(self, t: int, host: str, port: int, refused: bool, cap: int) -> None:
        if len(self.attempts) >= cap:
            self._drop()
        self.attempts.append((t, host, port, refused))
        self.ports_by_host.setdefault(host, Counter())[port] += 1
        self.hosts_by_port.setdefault(port, Counter())[host] += 1
        self.refused += refused
        self.last_ns = max(self.last_ns, t)

    def _drop(self) -> None:
        _, host, port, refused = self.attempts.popleft()
        self.refused -= refused
        ports = self.ports_by_host[host]
        ports[port] -= 1
        if ports[port] <= 0:
            del ports[port]
            if not ports:
                del self.ports_by_host[host]
        hosts = self.hosts_by_port[port]
        hosts[host] -= 1
        if hosts[host] <= 0:
            del hosts[host]
            if not hosts:
                del self.hosts_by_port[port]

    def expire(self, horizon_ns: int) -> None:
        while self.attempts and self.attempts[0][0] <= horizon_ns:
            self._drop()


class ScanDetector:
    """Sliding-window scan detection per actor; see the module doc."""

    def __init__(self, config: NetworkDetectConfig) -> None:
        self.config = config
        self._window_ns = int(config.scan_window.total_seconds() * _NS)
        self._ignore = _networks("scan_ignore_networks", config.scan_ignore_networks)
        self._actors: OrderedDict[tuple[Direction, str], _ScanState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._actors)

    def observe(self, attempt: Attempt) -> ScanFinding | None:
        cfg = self.config
        remote = normalize_address(attempt.remote.address)
        if attempt.direction is Direction.OUTBOUND:
            if attempt.actor is None:
                return None  # no process to attribute it to (and no scanner address)
            key = (Direction.OUTBOUND, attempt.actor.key)
            host, port = remote, attempt.remote.port
        else:
            key = (Direction.INBOUND, remote)
            host, port = normalize_address(attempt.local.address), attempt.local.port
        if _in_any(remote, self._ignore) or port == 0:
            return None
        state = self._actors.pop(key, None) or _ScanState()
        self._actors[key] = state  # most recently used last
        if attempt.actor is not None:
            state.actor = attempt.actor
        t = attempt.time_ns
        state.expire(t - self._window_ns)
        refused = attempt.result == -_ECONNREFUSED
        state.add(t, host, port, refused, cfg.scan_max_attempts_per_actor)
        self._evict(t)
        if state.reported_ns is not None and t - state.reported_ns < self._window_ns:
            return None
        vertical = max((len(p) for p in state.ports_by_host.values()), default=0)
        horizontal = max((len(h) for h in state.hosts_by_port.values()), default=0)
        if vertical >= cfg.scan_ports and horizontal >= cfg.scan_hosts:
            pattern = ScanPattern.BLOCK
        elif vertical >= cfg.scan_ports:
            pattern = ScanPattern.VERTICAL
        elif horizontal >= cfg.scan_hosts:
            pattern = ScanPattern.HORIZONTAL
        else:
            return None
        state.reported_ns = t
        return ScanFinding(
            time_ns=t,
            direction=attempt.direction,
            pattern=pattern,
            actor=state.actor if attempt.direction is Direction.OUTBOUND else None,
            source_address=remote if attempt.direction is Direction.INBOUND else "",
            distinct_ports=len(state.hosts_by_port),
            distinct_hosts=len(state.ports_by_host),
            attempts=len(state.attempts),
            refused=state.refused,
            window=cfg.scan_window,
            sample_ports=tuple(sorted(state.hosts_by_port))[:_SAMPLE],
            sample_addresses=tuple(sorted(state.ports_by_host))[:_SAMPLE],
        )

    def _evict(self, now_ns: int) -> None:
        horizon = now_ns - self._window_ns
        while self._actors:
            key, state = next(iter(self._actors.items()))
            stale = state.last_ns <= horizon and (
                state.reported_ns is None or state.reported_ns <= horizon
            )
            if not stale and len(self._actors) <= self.config.scan_max_actors:
                break
            del self._actors[key]


# --- transfers -----------------------------------------------------------------------------------


@dataclass
class _TransferState:
    actor: Owner | None
    # (time, bytes, socket cookie, remote) per counted delta, oldest first.
    samples: deque[tuple[int, int, int, Endpoint]] = field(default_factory=deque)
    total: int = 0
    reported_ns: int | None = None
    last_ns: int = 0


class _DirectionTotals:
    def __init__(self, direction: Direction, threshold: int, window_ns: int, cap: int) -> None:
        self.direction = direction
        self.threshold = threshold
        self.window_ns = window_ns
        self.cap = cap
        self.by_actor: OrderedDict[str, _TransferState] = OrderedDict()

    def add(
        self, t: int, key: str, actor: Owner | None, n: int, cookie: int, remote: Endpoint
    ) -> None:
        state = self.by_actor.pop(key, None) or _TransferState(actor)
        self.by_actor[key] = state
        state.samples.append((t, n, cookie, remote))
        state.total += n
        state.last_ns = t
        if actor is not None:
            state.actor = actor

    def check(self, now: int, window: timedelta) -> list[TransferFinding]:
        out = []
        horizon = now - self.window_ns
        for key in list(self.by_actor):
            state = self.by_actor[key]
            while state.samples and state.samples[0][0] <= horizon:
                state.total -= state.samples.popleft()[1]
            if not state.samples and (state.reported_ns is None or state.reported_ns <= horizon):
                del self.by_actor[key]
                continue
            if state.total < self.threshold:
                continue
            if state.reported_ns is not None and now - state.reported_ns < self.window_ns:
                continue
            state.reported_ns = now
            per_remote: Counter[Endpoint] = Counter()
            cookies = set()
            for _, n, cookie, remote in state.samples:
                per_remote[remote] += n
                cookies.add(cookie)
            top, top_bytes = per_remote.most_common(1)[0]
            out.append(
                TransferFinding(
                    time_ns=now,
                    direction=self.direction,
                    actor=state.actor,
                    bytes=state.total,
                    threshold_bytes=self.threshold,
                    window=window,
                    connections=len(cookies),
                    top_remote=top,
                    top_remote_bytes=top_bytes,
                )
            )
        while len(self.by_actor) > self.cap:
            self.by_actor.popitem(last=False)
        return out


_CLOSED_KEPT_NS: Final = 60 * 1_000_000_000
_CLOSED_MAX: Final = 1 << 16


class TransferDetector:
    """Byte counters per socket in, per-process windowed totals out; see the module doc."""

    def __init__(self, config: NetworkDetectConfig) -> None:
        self.config = config
        window_ns = int(config.transfer_window.total_seconds() * _NS)
        cap = config.transfer_max_processes
        self._ignore = _networks("transfer_ignore_networks", config.transfer_ignore_networks)
        self._dirs = [
            _DirectionTotals(d, threshold, window_ns, cap)
            for d, threshold in (
                (Direction.OUTBOUND, config.transfer_outbound_bytes),
                (Direction.INBOUND, config.transfer_inbound_bytes),
            )
            if threshold > 0
        ]
        # cookie -> (acked, received, owner): a socket's owner is remembered, because a socket
        # closed after sending is orphaned (inode 0, no owner) while its last bytes drain.
        self._last: dict[int, tuple[int, int, Owner | None]] = {}
        self._primed = False
        # cookie -> close time: sockets whose final counts came from the kernel at their close;
        # a poll that read them before the close and is processed after must not count again.
        self._closed: OrderedDict[int, int] = OrderedDict()

    def totals(self, direction: Direction) -> dict[str, int]:
        """Bytes in the window per actor key (for status and tests)."""
        for d in self._dirs:
            if d.direction is direction:
                return {k: s.total for k, s in d.by_actor.items()}
        return {}

    def observe(
        self, time_ns: int, sockets: Iterable[tuple[SocketInfo, Owner | None]]
    ) -> list[TransferFinding]:
        """One poll's TCP sockets with their owners. The first call only primes the counters."""
        last = self._last
        current: dict[int, tuple[int, int, Owner | None]] = {}
        closed = self._closed
        for sock, found in sockets:
            if sock.protocol != "tcp" or sock.cookie in closed:
                continue
            before = last.get(sock.cookie, (0, 0, None))
            owner = found if found is not None else before[2]
            current[sock.cookie] = (sock.bytes_acked, sock.bytes_received, owner)
            if not self._primed or not self._dirs:
                continue
            sent = max(0, sock.bytes_acked - before[0])
            received = max(0, sock.bytes_received - before[1])
            if not sent and not received:
                continue
            if _in_any(sock.remote.address, self._ignore):
                continue
            key = owner.key if owner is not None else f"uid:{sock.uid}"
            remote = Endpoint(normalize_address(sock.remote.address), sock.remote.port)
            for d in self._dirs:
                n = sent if d.direction is Direction.OUTBOUND else received
                if n:
                    d.add(time_ns, key, owner, n, sock.cookie, remote)
        self._last = current
        self._primed = True
        horizon = time_ns - _CLOSED_KEPT_NS
        while closed and next(iter(closed.values())) < horizon:
            closed.popitem(last=False)
        return self._check(time_ns)

    def _check(self, time_ns: int) -> list[TransferFinding]:
        out: list[TransferFinding] = []
        for d in self._dirs:
            out.extend(d.check(time_ns, self.config.transfer_window))
        return out

    def on_close(
        self,
        time_ns: int,
        remote: Endpoint,
        owner: Owner | None,
        uid: int,
        bytes_acked: int,
        bytes_received: int,
        cookie: int,
    ) -> list[TransferFinding]:
        """A TCP socket's end with the kernel's final counters (the eBPF sensor's). Counts what
        no poll counted: all of it for a socket no poll saw, the rest since the last poll."""
        before: tuple[int, int, Owner | None] = (0, 0, None)
        if cookie:
            before = self._last.pop(cookie, before)
            self._closed[cookie] = time_ns
            if len(self._closed) > _CLOSED_MAX:
                self._closed.popitem(last=False)
        owner = owner if owner is not None else before[2]
        sent = max(0, bytes_acked - before[0])
        received = max(0, bytes_received - before[1])
        if not self._dirs or (not sent and not received):
            return []
        if _in_any(remote.address, self._ignore):
            return []
        key = owner.key if owner is not None else f"uid:{uid}"
        remote = Endpoint(normalize_address(remote.address), remote.port)
        for d in self._dirs:
            n = sent if d.direction is Direction.OUTBOUND else received
            if n:
                d.add(time_ns, key, owner, n, cookie or -time_ns, remote)
        return self._check(time_ns)


# --- eBPF observations ---------------------------------------------------------------------------


def actor_of_observation(obs: Observation) -> Owner:
    info = obs.process
    if info is not None:
        return Owner(obs.pid, info.comm, info.exe, info.uid, info)
    return Owner(obs.pid, obs.comm, "", obs.uid)


def attempt_from_observation(obs: Observation) -> Attempt | None:
    """An eBPF connect (outbound) or accept (inbound) observation as an attempt; None for
    other kinds, unix sockets and failed accepts.

    accept(2) reports the peer but not the local port, so inbound attempts from it count
    hosts, not ports: inbound vertical scans come from the poller.
    """
    detail = obs.detail
    if obs.kind not in (Kind.CONNECT, Kind.ACCEPT) or not isinstance(detail, NetDetail):
        return None
    if detail.family not in ("inet", "inet6") or not detail.address:
        return None
    remote = Endpoint(detail.address, detail.port)
    if obs.kind is Kind.CONNECT:
        return Attempt(
            obs.time_ns, Direction.OUTBOUND, remote, actor=actor_of_observation(obs), result=obs.ret
        )
    if obs.ret is not None and obs.ret < 0:
        return None
    return Attempt(
        obs.time_ns, Direction.INBOUND, remote, NO_ENDPOINT, actor_of_observation(obs), obs.ret
    )


# --- the whole -----------------------------------------------------------------------------------


class NetworkDetector:
    """What the runtime calls: `on_poll(result)` after each socket poll, `on_observation(obs)`
    for each eBPF connect/accept observation. Not thread-safe: call from one thread."""

    def __init__(self, config: NetworkDetectConfig | None = None) -> None:
        self.config = cfg = config or NetworkDetectConfig()
        self.blocklists = BlocklistMatcher(cfg.blocklists)
        self.scans = ScanDetector(cfg)
        self.transfers = TransferDetector(cfg)
        self._listening_ports: frozenset[tuple[str, int]] = frozenset()

    def on_observation(self, obs: Observation) -> list[Finding]:
        detail = obs.detail
        if isinstance(detail, TcpCloseDetail):
            owner = actor_of_observation(obs) if detail.owner_known else None
            remote = Endpoint(detail.remote_address, detail.remote_port)
            return list(
                self.transfers.on_close(
                    obs.time_ns,
                    remote,
                    owner,
                    obs.uid if detail.owner_known else -1,
                    detail.bytes_acked,
                    detail.bytes_received,
                    detail.cookie,
                )
            )
        attempt = attempt_from_observation(obs)
        if attempt is None or attempt.direction is Direction.INBOUND:
            return []  # accept(2) does not give the local port: the poller counts inbound
        found = self.scans.observe(attempt)
        return [found] if found is not None else []

    def on_poll(self, result: PollResult) -> list[Finding]:
        cfg = self.config
        snap = result.snapshot
        now = snap.time_ns
        out: list[Finding] = []
        listening = frozenset(
            (s.protocol, s.local.port) for s in snap.sockets if s.state == "listen"
        )
        ports = listening | self._listening_ports  # a listener closed since still counts
        self._listening_ports = listening
        if cfg.report_listeners:
            for sock in result.new_listeners:
                out.append(
                    ConnectionFinding(
                        now,
                        "listen",
                        sock.protocol,
                        sock.family,
                        sock.local,
                        NO_ENDPOINT,
                        snap.owner_of(sock),
                    )
                )
        for sock in result.new_connections:
            inbound = ("tcp", sock.local.port) in ports
            owner = snap.owner_of(sock)
            remote = Endpoint(normalize_address(sock.remote.address), sock.remote.port)
            if not cfg.ebpf_connections and self.blocklists:
                hits = self.blocklists.match(remote.address, remote.port)
                if hits:
                    out.append(
                        ConnectionFinding(
                            now,
                            "accept" if inbound else "connect",
                            sock.protocol,
                            sock.family,
                            sock.local,
                            remote,
                            owner,
                            hits,
                        )
                    )
            attempt = Attempt(
                now,
                Direction.INBOUND if inbound else Direction.OUTBOUND,
                remote,
                sock.local,
                owner,
            )
            if inbound or not cfg.ebpf_connections:
                found = self.scans.observe(attempt)
                if found is not None:
                    out.append(found)
        pairs = [(s, snap.owner_of(s)) for s in snap.sockets if s.protocol == "tcp"]
        out.extend(self.transfers.observe(now, pairs))
        return out
