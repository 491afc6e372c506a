"""Cortex domain types -> protobuf: the one place besides the servicer that builds `qsc.*` messages.

Only the read API's conversions live here so far: `GuardianView` -> `qsc.cortex.v1.Guardian`.
Events need none: the store keeps and returns `qsc.common.v1.Event` messages as they arrived.
"""

from __future__ import annotations

from typing import Final

from cortex.guardian_view import ConnectionState, GuardianView
from qsc.common.v1 import identity_pb2
from qsc.cortex.v1 import guardian_pb2

_STATES: Final = {
    ConnectionState.CONNECTING: guardian_pb2.CONNECTION_STATE_CONNECTING,
    ConnectionState.CONNECTED: guardian_pb2.CONNECTION_STATE_CONNECTED,
    ConnectionState.DISCONNECTED: guardian_pb2.CONNECTION_STATE_DISCONNECTED,
    ConnectionState.REFUSED: guardian_pb2.CONNECTION_STATE_REFUSED,
}
# An unknown role string (a configuration typo) shows as ROLE_UNSPECIFIED rather than failing
# the whole listing: the guardian is still worth seeing, with its host and last error.
_ROLES: Final = {
    "alpha": identity_pb2.ROLE_ALPHA,
    "beta": identity_pb2.ROLE_BETA,
}


def guardian(view: GuardianView) -> guardian_pb2.Guardian:
    """`view` as the API's Guardian resource. Sequence numbers and counts are clamped at 0 (the
    message's fields are unsigned: a negative value from a bug must not fail the call)."""
    message = guardian_pb2.Guardian(
        name=view.name,
        guardian=identity_pb2.GuardianRef(
            id=view.guardian_id,
            role=_ROLES.get(view.role, identity_pb2.ROLE_UNSPECIFIED),
            host=view.host,
        ),
        address=view.address,
        state=_STATES[view.state],
        sealed=view.sealed,
        committed_seq=max(0, view.committed_seq),
        latest_seq=max(0, view.latest_seq),
        lag_events=view.lag_events,
        events_lost=max(0, view.events_lost),
        degraded_sensors=list(view.degraded_sensors),
        version=view.version,
        last_error=view.last_error,
    )
    message.lag.FromNanoseconds(max(0, view.lag_ns))
    if view.connect_time_ns is not None:
        message.connect_time.FromNanoseconds(view.connect_time_ns)
    if view.last_contact_ns is not None:
        message.last_contact_time.FromNanoseconds(view.last_contact_ns)
    return message
