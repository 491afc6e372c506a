"""`GuardianTracker`: what the Cortex knows of each guardian it follows, as `GuardianView`s.

    tracker = GuardianTracker(config.guardians)
    tracker.observe(fanin.states())                 # every watch tick: phase, cursor, latest
    findings = tracker.on_batch("alpha-web-01", batch.events, batch.received_at)
    tracker.silent(deadline_ns)                     # ids newly silent past the deadline
    tracker.guardians()                             # -> (GuardianView, ...), config order

It combines two sources, because neither alone says it all: the fan-in's `GuardianState`
(connection phase, stored cursor, the guardian's reported latest seq, errors) and what the
stored batches show (gap events -> `events_lost`, sensor-health events -> `degraded_sensors`).

Decisions:

* **Contact.** A connected stream carries heartbeats (the subscriber redials after its idle
  timeout without even those), so every tick that sees CONNECTED, and every batch, is contact.
  Silence is the time since the last contact (or since the tracker began following the guardian
  when it never answered); `silent` reports a guardian once per silence.
* **REFUSED** is an identity or policy refusal (certificate, role, host, signature, a
  PERMISSION_DENIED subscription, a foreign cursor, events naming another guardian id): the
  fan-in does not retry those, and neither does the Cortex until the configuration changes.
  Other permanent failures (cursor out of range, giving up) are DISCONNECTED with the error.
* **Lag in time** is the time since the Cortex first saw the guardian ahead of what is stored,
  an upper bound on the age of the oldest event not yet stored (the stream carries no event
  times before the events themselves).
* `events_lost` and `degraded_sensors` are counted from what this process stored, so they start
  from zero at each start (the stored gap and sensor events remain queryable).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cortex.config import GuardianSection
from cortex.guardian_view import ConnectionState, GuardianView
from mesh.stream.cursor import ForeignCursorError
from mesh.stream.fanin import GuardianPhase, GuardianState
from mesh.stream.subscriber import GuardianIdentityError, SubscriptionRefusedError
from qsc.common.v1 import event_pb2, pipeline_details_pb2

__all__ = ["GapFinding", "GuardianTracker", "SensorFinding", "is_refusal"]

Clock = Callable[[], int]  # nanoseconds since the epoch

_REFUSALS: tuple[type[BaseException], ...] = (
    GuardianIdentityError,
    SubscriptionRefusedError,
    ForeignCursorError,
)
_BAD_SENSOR_STATES = frozenset(
    {pipeline_details_pb2.SENSOR_STATE_DEGRADED, pipeline_details_pb2.SENSOR_STATE_FAILED}
)


def is_refusal(error: BaseException | None) -> bool:
    """An identity or policy refusal: never retried, shown as REFUSED."""
    return isinstance(error, _REFUSALS)


@dataclass(frozen=True)
class GapFinding:
    """A gap event of a guardian: the range it reports lost."""

    guardian_id: str
    seq: int  # the gap event's own seq
    first_seq: int
    last_seq: int
    count: int
    reason: str


@dataclass(frozen=True)
class SensorFinding:
    """A sensor of a guardian became degraded or failed."""

    guardian_id: str
    seq: int
    sensor: str
    state: str  # "degraded" or "failed"
    reasons: tuple[str, ...]


@dataclass
class _Entry:
    section: GuardianSection
    since_ns: int  # when the tracker began following it (silence counts from here at first)
    state: ConnectionState = ConnectionState.CONNECTING
    spiffe_id: str = ""
    committed_seq: int = 0
    latest_seq: int = 0
    behind_since_ns: int | None = None
    events_lost: int = 0
    degraded: set[str] = dataclasses.field(default_factory=set)
    version: str = ""
    connect_time_ns: int | None = None
    last_contact_ns: int | None = None
    last_error: str = ""
    refused: str = ""  # a refusal the Cortex itself made (events of another guardian id)
    silence_reported: bool = False

    def view(self, now_ns: int) -> GuardianView:
        s = self.section
        lag = 0 if self.behind_since_ns is None else max(0, now_ns - self.behind_since_ns)
        return GuardianView(
            guardian_id=s.id,
            role=s.role,
            host=s.host,
            spiffe_id=self.spiffe_id,
            address=s.address,
            state=self.state,
            sealed=True,
            committed_seq=self.committed_seq,
            latest_seq=max(self.latest_seq, self.committed_seq),
            lag_ns=lag,
            events_lost=self.events_lost,
            degraded_sensors=tuple(sorted(self.degraded)),
            version=self.version,
            connect_time_ns=self.connect_time_ns,
            last_contact_ns=self.last_contact_ns,
            last_error=self.last_error,
        )


class GuardianTracker:
    """A `cortex.guardian_view.GuardianDirectory` fed by the ingest; see the module docstring.

    Called from the event loop only (the fan-in's consumer and the watch task share it)."""

    def __init__(self, guardians: Sequence[GuardianSection], *, clock: Clock = time.time_ns):
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self.configure(guardians)

    def configure(self, guardians: Sequence[GuardianSection]) -> None:
        """Follow exactly `guardians` (a reload): an entry whose id, address, role and host are
        unchanged keeps its state; a changed or new one starts afresh (a refusal is lifted)."""
        now = self._clock()
        entries: dict[str, _Entry] = {}
        for section in guardians:
            old = self._entries.get(section.id)
            entries[section.id] = (
                old if old is not None and old.section == section else _Entry(section, now)
            )
        self._entries = entries

    def ids(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def guardians(self) -> Sequence[GuardianView]:
        now = self._clock()
        return tuple(e.view(now) for e in self._entries.values())

    def refused(self) -> frozenset[str]:
        """Ids the Cortex refused itself (left out of the fan-in until a reload changes them)."""
        return frozenset(i for i, e in self._entries.items() if e.refused)

    def refuse(self, guardian_id: str, reason: str) -> None:
        entry = self._entries.get(guardian_id)
        if entry is not None:
            entry.refused = reason
            entry.state = ConnectionState.REFUSED
            entry.last_error = reason

    def seed(self, guardian_id: str, committed_seq: int) -> None:
        """What the store already holds of `guardian_id` (its stored cursor), so a restarted
        Cortex reports it before the guardian answers."""
        entry = self._entries.get(guardian_id)
        if entry is not None:
            entry.committed_seq = max(entry.committed_seq, committed_seq)

    def observe(self, states: Mapping[str, GuardianState]) -> None:
        """Take in the fan-in's snapshot (keyed by guardian id)."""
        now = self._clock()
        for guardian_id, st in states.items():
            entry = self._entries.get(guardian_id)
            if entry is None or entry.refused:
                continue
            if st.guardian:
                entry.spiffe_id = st.guardian
            entry.committed_seq = max(entry.committed_seq, st.cursor)
            entry.latest_seq = max(entry.latest_seq, st.latest_seq)
            entry.last_error = st.last_error
            state = self._state(st)
            if state is ConnectionState.CONNECTED:
                if entry.state is not ConnectionState.CONNECTED:
                    entry.connect_time_ns = now
                self._contact(entry, now)
            entry.state = state
            self._lag(entry, now)

    @staticmethod
    def _state(st: GuardianState) -> ConnectionState:
        if st.phase is GuardianPhase.CONNECTED:
            return ConnectionState.CONNECTED
        if st.phase is GuardianPhase.CONNECTING:
            return ConnectionState.CONNECTING
        if st.phase is GuardianPhase.FAILED and is_refusal(st.error):
            return ConnectionState.REFUSED
        return ConnectionState.DISCONNECTED

    @staticmethod
    def _contact(entry: _Entry, now: int) -> None:
        entry.last_contact_ns = now
        entry.silence_reported = False

    @staticmethod
    def _lag(entry: _Entry, now: int) -> None:
        if entry.latest_seq > entry.committed_seq:
            if entry.behind_since_ns is None:
                entry.behind_since_ns = now
        else:
            entry.behind_since_ns = None

    def on_batch(
        self,
        guardian_id: str,
        events: Iterable[event_pb2.Event],
        received_at: float | None = None,
    ) -> list[GapFinding | SensorFinding]:
        """Take in a stored batch; return the gaps and newly degraded sensors it shows."""
        entry = self._entries.get(guardian_id)
        if entry is None:
            return []
        now = self._clock()
        findings: list[GapFinding | SensorFinding] = []
        last = entry.committed_seq
        for event in events:
            last = max(last, event.seq)
            kind = event.WhichOneof("detail")
            if kind == "gap":
                gap = event.gap
                count = gap.count or max(0, gap.last_seq - gap.first_seq + 1)
                entry.events_lost += count
                findings.append(
                    GapFinding(
                        guardian_id,
                        event.seq,
                        gap.first_seq,
                        gap.last_seq,
                        count,
                        pipeline_details_pb2.GapReason.Name(gap.reason),
                    )
                )
            elif kind == "sensor_health":
                health = event.sensor_health
                if health.state in _BAD_SENSOR_STATES:
                    if health.sensor not in entry.degraded:
                        findings.append(
                            SensorFinding(
                                guardian_id,
                                event.seq,
                                health.sensor,
                                "failed"
                                if health.state == pipeline_details_pb2.SENSOR_STATE_FAILED
                                else "degraded",
                                tuple(health.reasons),
                            )
                        )
                    entry.degraded.add(health.sensor)
                elif health.state == pipeline_details_pb2.SENSOR_STATE_HEALTHY:
                    entry.degraded.discard(health.sensor)
        entry.committed_seq = last
        entry.latest_seq = max(entry.latest_seq, last)
        contact = now if received_at is None else max(int(received_at * 1e9), 0)
        self._contact(entry, max(contact, entry.last_contact_ns or 0))
        self._lag(entry, now)
        return findings

    def silent(self, deadline_ns: int) -> list[GuardianView]:
        """Guardians without contact for longer than `deadline_ns`, each once per silence
        (a later contact re-arms it). Refused guardians are not "silent": they are refused."""
        now = self._clock()
        out: list[GuardianView] = []
        for entry in self._entries.values():
            if entry.silence_reported or entry.state is ConnectionState.REFUSED:
                continue
            if entry.state is ConnectionState.CONNECTED:
                continue
            since = entry.last_contact_ns if entry.last_contact_ns is not None else entry.since_ns
            if now - since > deadline_ns:
                entry.silence_reported = True
                out.append(entry.view(now))
        return out
