"""Network findings -> `qsc.common.v1.Event` (the only qsc.* import of alpha.network)."""

from __future__ import annotations

from typing import Final

from alpha.network.detect import (
    BlocklistMatcher,
    ConnectionFinding,
    Direction,
    Finding,
    ScanFinding,
    ScanPattern,
    TransferFinding,
)
from alpha.network.sockets import Endpoint, Owner
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2, process_pb2
from qsc.common.v1 import network_details_pb2 as pb

__all__ = [
    "annotate_blocklists",
    "finding_to_event",
    "owner_to_process",
]

_OPERATION: Final[dict[str, pb.ConnectionOperation.ValueType]] = {
    "connect": pb.CONNECTION_OPERATION_CONNECT,
    "accept": pb.CONNECTION_OPERATION_ACCEPT,
    "listen": pb.CONNECTION_OPERATION_LISTEN,
}
_FAMILY: Final[dict[str, pb.AddressFamily.ValueType]] = {
    "inet": pb.ADDRESS_FAMILY_INET,
    "inet6": pb.ADDRESS_FAMILY_INET6,
    "unix": pb.ADDRESS_FAMILY_UNIX,
}
_PROTOCOL: Final[dict[str, pb.TransportProtocol.ValueType]] = {
    "tcp": pb.TRANSPORT_PROTOCOL_TCP,
    "udp": pb.TRANSPORT_PROTOCOL_UDP,
}
_DIRECTION: Final[dict[Direction, pb.TrafficDirection.ValueType]] = {
    Direction.INBOUND: pb.TRAFFIC_DIRECTION_INBOUND,
    Direction.OUTBOUND: pb.TRAFFIC_DIRECTION_OUTBOUND,
}
_PATTERN: Final[dict[ScanPattern, pb.ScanPattern.ValueType]] = {
    ScanPattern.VERTICAL: pb.SCAN_PATTERN_VERTICAL,
    ScanPattern.HORIZONTAL: pb.SCAN_PATTERN_HORIZONTAL,
    ScanPattern.BLOCK: pb.SCAN_PATTERN_BLOCK,
}
_CONNECT: Final = pb.CONNECTION_OPERATION_CONNECT


def owner_to_process(owner: Owner) -> process_pb2.Process:
    """The event's process: the sensor's full view when it had one, else what /proc showed."""
    info = owner.info
    if info is None:
        proc = process_pb2.Process(pid=owner.pid, comm=owner.comm, exe=owner.exe)
        if owner.uid is not None:
            proc.uid = proc.euid = owner.uid
        return proc
    proc = process_pb2.Process(
        pid=info.pid,
        ppid=info.ppid,
        uid=info.uid,
        gid=info.gid,
        euid=info.uid if info.euid is None else info.euid,
        comm=info.comm,
        exe=info.exe,
        args=list(info.args),
        cwd=info.cwd,
        exec_id=info.exec_id,
        parent_exec_id=info.parent_exec_id,
        cgroup=info.cgroup,
        container_id=info.container_id,
    )
    for anc in info.ancestry:
        proc.ancestry.add(pid=anc.pid, exec_id=anc.exec_id, comm=anc.comm, exe=anc.exe)
    return proc


def _endpoint(msg: pb.Endpoint, ep: Endpoint) -> None:
    msg.address = ep.address
    msg.port = ep.port


def _who(owner: Owner | None) -> str:
    return f"{owner.comm or '?'}[{owner.pid}]" if owner is not None else "an unknown process"


def _connection(f: ConnectionFinding, event: event_pb2.Event) -> None:
    msg = event.network_connection
    msg.operation = _OPERATION[f.operation]
    msg.family = _FAMILY.get(f.family, pb.ADDRESS_FAMILY_OTHER)
    msg.protocol = _PROTOCOL.get(f.protocol, pb.TRANSPORT_PROTOCOL_UNSPECIFIED)
    _endpoint(msg.local, f.local)
    if f.operation != "listen":
        _endpoint(msg.remote, f.remote)
    msg.blocklists.extend(f.blocklists)
    msg.result = f.result
    if f.operation == "listen":
        event.summary = f"{_who(f.actor)} listens on {f.protocol} {f.local}"
        event.severity = cls.SEVERITY_LOW
    else:
        event.summary = (
            f"{_who(f.actor)}: {f.operation} {f.local} <-> {f.remote}"
            f" (blocklists: {', '.join(f.blocklists)})"
        )
        event.severity = cls.SEVERITY_HIGH if f.blocklists else cls.SEVERITY_INFO


def _scan(f: ScanFinding, event: event_pb2.Event) -> None:
    msg = event.port_scan
    msg.direction = _DIRECTION[f.direction]
    msg.pattern = _PATTERN[f.pattern]
    msg.source_address = f.source_address
    msg.distinct_ports = f.distinct_ports
    msg.distinct_hosts = f.distinct_hosts
    msg.attempts = f.attempts
    msg.window.FromTimedelta(f.window)
    msg.sample_ports.extend(f.sample_ports)
    msg.sample_addresses.extend(f.sample_addresses)
    who = f.source_address if f.direction is Direction.INBOUND else _who(f.actor)
    event.summary = (
        f"{f.direction.value} {f.pattern.value} port scan by {who}: {f.distinct_ports} ports,"
        f" {f.distinct_hosts} hosts, {f.attempts} attempts ({f.refused} refused)"
        f" in {int(f.window.total_seconds())}s"
    )
    event.severity = cls.SEVERITY_MEDIUM


def _transfer(f: TransferFinding, event: event_pb2.Event) -> None:
    msg = event.transfer_volume
    msg.direction = _DIRECTION[f.direction]
    msg.bytes = f.bytes
    msg.threshold_bytes = f.threshold_bytes
    msg.window.FromTimedelta(f.window)
    msg.connections = f.connections
    _endpoint(msg.top_remote, f.top_remote)
    msg.top_remote_bytes = f.top_remote_bytes
    verb = "sent" if f.direction is Direction.OUTBOUND else "received"
    event.summary = (
        f"{_who(f.actor)} {verb} {f.bytes} bytes in {int(f.window.total_seconds())}s over"
        f" {f.connections} connections (most with {f.top_remote}: {f.top_remote_bytes})"
    )
    event.severity = cls.SEVERITY_MEDIUM


def finding_to_event(f: Finding) -> event_pb2.Event:
    """An event for the rules and the outbox; the runtime stamps id, guardian and seq."""
    event = event_pb2.Event(category=cls.CATEGORY_NETWORK)
    event.time.FromNanoseconds(f.time_ns)
    if isinstance(f, ConnectionFinding):
        _connection(f, event)
    elif isinstance(f, ScanFinding):
        _scan(f, event)
    else:
        _transfer(f, event)
    if f.actor is not None:
        event.process.CopyFrom(owner_to_process(f.actor))
    return event


def annotate_blocklists(event: event_pb2.Event, matcher: BlocklistMatcher) -> None:
    """Fill `network_connection.blocklists` of an event made elsewhere (the eBPF sensor's
    connect/accept events): the remote peer is the one matched."""
    if not matcher or event.WhichOneof("detail") != "network_connection":
        return
    conn = event.network_connection
    if conn.remote.address:
        hits = matcher.match(conn.remote.address, conn.remote.port)
        if hits:
            del conn.blocklists[:]
            conn.blocklists.extend(hits)
