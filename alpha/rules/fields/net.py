"""`net.*`, `socket.*`, `scan.*`, `transfer.*`: connections, sockets, scans, volumes."""

from __future__ import annotations

from operator import attrgetter

from alpha.rules.fields.extractors import (
    enum_at,
    enum_names,
    int_at,
    seconds_at,
    sequence_at,
    string_at,
)
from alpha.rules.fields.table import ADDR, ENUM, INT, STRING, Event, Extractor, Value, add_field
from qsc.common.v1 import network_details_pb2

_NET = "network_connection"
_FAMILIES = enum_names(network_details_pb2.AddressFamily.DESCRIPTOR, "ADDRESS_FAMILY_")
add_field(
    "net.family",
    ENUM,
    "Address family: inet, inet6, unix, packet, netlink, other.",
    per_kind={
        _NET: enum_at(f"{_NET}.family", _FAMILIES),
        "socket_create": enum_at("socket_create.family", _FAMILIES),
    },
    choices=tuple(_FAMILIES.values()),
)
_OPERATIONS = enum_names(
    network_details_pb2.ConnectionOperation.DESCRIPTOR, "CONNECTION_OPERATION_"
)
add_field(
    "net.op",
    ENUM,
    "What happened on the socket: connect, accept, listen.",
    per_kind={_NET: enum_at(f"{_NET}.operation", _OPERATIONS)},
    choices=tuple(_OPERATIONS.values()),
)
_PROTOCOLS = enum_names(network_details_pb2.TransportProtocol.DESCRIPTOR, "TRANSPORT_PROTOCOL_")
add_field(
    "net.proto",
    ENUM,
    "Transport protocol: tcp, udp, icmp, sctp, raw.",
    per_kind={_NET: enum_at(f"{_NET}.protocol", _PROTOCOLS)},
    choices=tuple(_PROTOCOLS.values()),
    aliases=("fd.l4proto",),
)
add_field("net.laddr", ADDR, "Local address.", per_kind={_NET: string_at(f"{_NET}.local.address")})
add_field(
    "net.lport",
    INT,
    "Local port.",
    per_kind={_NET: int_at(f"{_NET}.local.port")},
    aliases=("fd.lport",),
)
add_field(
    "net.raddr",
    ADDR,
    "Remote address (missing for listen).",
    per_kind={_NET: string_at(f"{_NET}.remote.address")},
)
add_field(
    "net.rport",
    INT,
    "Remote port (0 for listen).",
    per_kind={_NET: int_at(f"{_NET}.remote.port")},
    aliases=("fd.rport",),
)
_CONNECT = network_details_pb2.CONNECTION_OPERATION_CONNECT


def _server_side(attr: str) -> Extractor:
    # Falco's server/client view: for connect the server is the remote end, for accept and listen
    # it is the local one. `net.dport` is then the service port whichever side we are.
    remote = attrgetter(f"{_NET}.remote.{attr}")
    local = attrgetter(f"{_NET}.local.{attr}")

    def ext(ev: Event) -> Value:
        value = remote(ev) if ev.network_connection.operation == _CONNECT else local(ev)
        return value if attr == "port" else (value or None)

    return ext


def _client_side(attr: str) -> Extractor:
    remote = attrgetter(f"{_NET}.remote.{attr}")
    local = attrgetter(f"{_NET}.local.{attr}")

    def ext(ev: Event) -> Value:
        value = local(ev) if ev.network_connection.operation == _CONNECT else remote(ev)
        return value if attr == "port" else (value or None)

    return ext


add_field(
    "net.dport",
    INT,
    "Server (destination) port: the remote port of a connect, the local port of accept/listen.",
    per_kind={_NET: _server_side("port")},
    aliases=("fd.sport",),
)
add_field(
    "net.daddr",
    ADDR,
    "Server (destination) address: remote for connect, local for accept/listen.",
    per_kind={_NET: _server_side("address")},
    aliases=("fd.sip",),
)
add_field(
    "net.sport",
    INT,
    "Client (source) port: the local port of a connect, the remote port of an accept.",
    per_kind={_NET: _client_side("port")},
    aliases=("fd.cport",),
)
add_field(
    "net.saddr",
    ADDR,
    "Client (source) address: local for connect, remote for accept.",
    per_kind={_NET: _client_side("address")},
    aliases=("fd.cip",),
)
add_field(
    "net.blocklists",
    STRING,
    "Names of the configured blocklists the remote address matched, as a list.",
    per_kind={_NET: sequence_at(f"{_NET}.blocklists")},
    is_list=True,
    cost=1,
)
add_field(
    "socket.type",
    INT,
    "Raw socket type (SOCK_STREAM=1, SOCK_DGRAM=2, SOCK_RAW=3, ...).",
    per_kind={"socket_create": int_at("socket_create.socket_type")},
)
add_field(
    "socket.raw_family",
    INT,
    "Raw address family number (AF_PACKET=17, ...).",
    per_kind={"socket_create": int_at("socket_create.raw_family")},
)
add_field(
    "socket.protocol",
    INT,
    "Raw protocol number passed to socket(2).",
    per_kind={"socket_create": int_at("socket_create.raw_protocol")},
)
_DIRECTIONS = enum_names(network_details_pb2.TrafficDirection.DESCRIPTOR, "TRAFFIC_DIRECTION_")
_PATTERNS = enum_names(network_details_pb2.ScanPattern.DESCRIPTOR, "SCAN_PATTERN_")
_SCAN = "port_scan"
add_field(
    "scan.direction",
    ENUM,
    "Inbound (this host is scanned) or outbound (this host scans).",
    per_kind={_SCAN: enum_at(f"{_SCAN}.direction", _DIRECTIONS)},
    choices=tuple(_DIRECTIONS.values()),
)
add_field(
    "scan.pattern",
    ENUM,
    "Vertical (many ports), horizontal (many hosts) or block.",
    per_kind={_SCAN: enum_at(f"{_SCAN}.pattern", _PATTERNS)},
    choices=tuple(_PATTERNS.values()),
)
add_field(
    "scan.source",
    ADDR,
    "For an inbound scan: the scanner.",
    per_kind={_SCAN: string_at(f"{_SCAN}.source_address")},
)
add_field(
    "scan.ports",
    INT,
    "Distinct ports in the window.",
    per_kind={_SCAN: int_at(f"{_SCAN}.distinct_ports")},
)
add_field(
    "scan.hosts",
    INT,
    "Distinct hosts in the window.",
    per_kind={_SCAN: int_at(f"{_SCAN}.distinct_hosts")},
)
add_field(
    "scan.attempts",
    INT,
    "Connection attempts in the window.",
    per_kind={_SCAN: int_at(f"{_SCAN}.attempts")},
)
add_field(
    "scan.window", INT, "Window length, seconds.", per_kind={_SCAN: seconds_at(f"{_SCAN}.window")}
)
_XFER = "transfer_volume"
add_field(
    "transfer.direction",
    ENUM,
    "Inbound or outbound.",
    per_kind={_XFER: enum_at(f"{_XFER}.direction", _DIRECTIONS)},
    choices=tuple(_DIRECTIONS.values()),
)
add_field(
    "transfer.bytes",
    INT,
    "Bytes transferred in the window.",
    per_kind={_XFER: int_at(f"{_XFER}.bytes")},
)
add_field(
    "transfer.threshold",
    INT,
    "The sensor's threshold that was crossed, bytes per window.",
    per_kind={_XFER: int_at(f"{_XFER}.threshold_bytes")},
)
add_field(
    "transfer.window",
    INT,
    "Window length, seconds.",
    per_kind={_XFER: seconds_at(f"{_XFER}.window")},
)
add_field(
    "transfer.connections",
    INT,
    "Connections the bytes were spread over.",
    per_kind={_XFER: int_at(f"{_XFER}.connections")},
)
add_field(
    "transfer.raddr",
    ADDR,
    "The remote address that exchanged the most bytes.",
    per_kind={_XFER: string_at(f"{_XFER}.top_remote.address")},
)
add_field(
    "transfer.rport",
    INT,
    "Port of that remote end.",
    per_kind={_XFER: int_at(f"{_XFER}.top_remote.port")},
)
add_field(
    "transfer.rbytes",
    INT,
    "Bytes exchanged with that remote end.",
    per_kind={_XFER: int_at(f"{_XFER}.top_remote_bytes")},
)
