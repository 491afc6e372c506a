"""Sockets: new listening ports, blocklisted peers, port scans and large transfers.

Interface for the guardian runtime
----------------------------------

    from alpha.network import NetworkDetector, NetworkDetectConfig, SocketPoller, finding_to_event

    poller = SocketPoller(process_info=sensor.table.info)    # sock_diag via pyroute2
    detector = NetworkDetector(config)                       # pure, time from its inputs
    every config.poll_interval:
        for finding in detector.on_poll(poller.poll()):
            rules/outbox <- finding_to_event(finding)
    for each eBPF connect observation (config.ebpf_connections = True):
        for finding in detector.on_observation(obs): ...
    and annotate_blocklists(event, detector.blocklists) on the sensor's network events.

- `sockets`: `SocketPoller` (sock_diag dump + /proc owners, diffed), `find_owners`.
- `detect`: `NetworkDetector`, `BlocklistMatcher`, `ScanDetector`, `TransferDetector`.
- `convert`: `finding_to_event`, `annotate_blocklists`, `owner_to_process`.
"""

from __future__ import annotations

from alpha.network.convert import annotate_blocklists, finding_to_event, owner_to_process
from alpha.network.detect import (
    Attempt,
    Blocklist,
    BlocklistMatcher,
    ConnectionFinding,
    Direction,
    Finding,
    NetworkDetectConfig,
    NetworkDetector,
    ScanDetector,
    ScanFinding,
    ScanPattern,
    TransferDetector,
    TransferFinding,
    attempt_from_observation,
)
from alpha.network.sockets import (
    Endpoint,
    Owner,
    PollResult,
    SocketInfo,
    SocketPoller,
    SocketSnapshot,
    SocketUnavailableError,
    find_owners,
)

__all__ = [
    "Attempt",
    "Blocklist",
    "BlocklistMatcher",
    "ConnectionFinding",
    "Direction",
    "Endpoint",
    "Finding",
    "NetworkDetectConfig",
    "NetworkDetector",
    "Owner",
    "PollResult",
    "ScanDetector",
    "ScanFinding",
    "ScanPattern",
    "SocketInfo",
    "SocketPoller",
    "SocketSnapshot",
    "SocketUnavailableError",
    "TransferDetector",
    "TransferFinding",
    "annotate_blocklists",
    "attempt_from_observation",
    "find_owners",
    "finding_to_event",
    "owner_to_process",
]
