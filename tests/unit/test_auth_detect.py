"""The auth detector with an injected clock: windows, bursts, new sources, history, events, and
the default rules firing on what it makes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from alpha.auth.convert import finding_to_event
from alpha.auth.detect import (
    AuthDetectConfig,
    AuthDetector,
    AuthFinding,
    LoginHistory,
    Outcome,
    load_history,
    save_history,
)
from alpha.auth.follow import LogLine
from alpha.auth.sshd import Method, Record, RecordKind
from alpha.rules import RuleEngine
from mesh.errors import ConfigError
from qsc.common.v1 import auth_details_pb2 as pb
from qsc.common.v1 import classification_pb2 as cls

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * S)


def failed(user: str, addr: str = "203.0.113.9", port: int = 40000, **kw: object) -> Record:
    return Record(RecordKind.FAILED, user, addr, port, Method.PASSWORD, pid=10, **kw)  # type: ignore[arg-type]


def accepted(user: str, addr: str = "203.0.113.9", port: int = 40001) -> Record:
    return Record(RecordKind.ACCEPTED, user, addr, port, Method.PASSWORD, pid=11)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine.default()


def fired(engine: RuleEngine, f: AuthFinding) -> set[str]:
    return {m.rule_id for m in engine.evaluate(finding_to_event(f))}


def test_failures_count_per_source_and_slide(clock: Clock) -> None:
    det = AuthDetector(AuthDetectConfig(window=timedelta(seconds=60)), clock=clock)
    counts = []
    for i in range(5):
        (f,) = det.observe(failed("root", port=40000 + i))
        counts.append(f.source_failures)
        clock.advance(10)
    assert counts == [1, 2, 3, 4, 5]
    # t=50 now; at t=61 the attempt made at t=0 has left the window (buckets are 1 s).
    clock.advance(11)
    (f,) = det.observe(failed("root"))
    assert f.source_failures == 5
    clock.advance(600)
    (f,) = det.observe(failed("root"))
    assert f.source_failures == 1
    # Another source has its own count.
    (g,) = det.observe(failed("root", addr="198.51.100.1"))
    assert g.source_failures == 1
    assert g.user_failures == 2
    assert g.user_sources == 2


def test_credential_stuffing_distinct_users_and_rule(clock: Clock, engine: RuleEngine) -> None:
    det = AuthDetector(clock=clock)
    rules_at = {}
    for i in range(12):
        (f,) = det.observe(failed(f"user{i % 6}", port=50000 + i))
        rules_at[i + 1] = fired(engine, f)
        clock.advance(1)
    assert f.source_users == 6
    assert f.source_failures == 12
    assert f.burst
    # The default rule fires at 5 distinct users and at 10 failures, not in between.
    assert "alpha.credential_stuffing" in rules_at[5]
    assert "alpha.credential_stuffing" in rules_at[10]
    assert "alpha.credential_stuffing" not in rules_at[4]
    assert "alpha.credential_stuffing" not in rules_at[7]
    ev = finding_to_event(f)
    assert ev.auth_event.failures_in_window == 12
    assert ev.auth_event.distinct_users_in_window == 6
    assert ev.auth_event.window.seconds == 600
    assert ev.severity == cls.SEVERITY_MEDIUM


def test_brute_force_on_one_user_from_many_sources(clock: Clock) -> None:
    cfg = AuthDetectConfig(user_burst_failures=8)
    det = AuthDetector(cfg, clock=clock)
    out = [det.observe(failed("alice", addr=f"192.0.2.{i}"))[0] for i in range(8)]
    assert [f.source_failures for f in out] == [1] * 8
    assert out[-1].user_failures == 8
    assert out[-1].user_sources == 8
    assert out[-1].burst
    assert not out[-2].burst
    ev = finding_to_event(out[-1]).auth_event
    assert (ev.user_failures_in_window, ev.user_distinct_sources_in_window) == (8, 8)


def test_success_after_burst_and_new_source(clock: Clock, engine: RuleEngine) -> None:
    det = AuthDetector(clock=clock)
    for i in range(6):
        det.observe(failed("alice", port=41000 + i))
    (ok,) = det.observe(accepted("alice"))
    assert ok.outcome is Outcome.ACCEPTED
    assert ok.source_failures == 6
    assert ok.new_source
    assert ok.previous_login_ns is None
    assert not ok.burst  # 6 < the detector's 10; the rule's threshold is 5
    assert ok.reason == "accepted_new_source"
    assert {"alpha.brute_force_success", "alpha.login_new_source"} <= fired(engine, ok)
    ev = finding_to_event(ok)
    assert ev.auth_event.outcome == pb.AUTH_OUTCOME_ACCEPTED
    assert ev.auth_event.new_source_address
    assert not ev.auth_event.HasField("previous_login_time")
    # The same user from the same address again: known, with the time of the last login.
    first_login = clock.t
    clock.advance(3600)
    (again,) = det.observe(accepted("alice"))
    assert not again.new_source
    assert again.previous_login_ns == first_login
    assert again.source_failures == 0  # the failures left the 10-minute window
    assert fired(engine, again) == set()
    ev = finding_to_event(again)
    assert ev.auth_event.previous_login_time.ToNanoseconds() == first_login
    # Another user from that address is new for that user.
    (bob,) = det.observe(accepted("bob"))
    assert bob.new_source


def test_preauth_disconnect_counts_once(clock: Clock) -> None:
    det = AuthDetector(clock=clock)
    # A scanner probing a user name: no Failed line, the connection just closes.
    assert det.observe(Record(RecordKind.INVALID_USER, "oracle", "192.0.2.5", 1, pid=3)) == []
    (f,) = det.observe(
        Record(RecordKind.CLOSED_PREAUTH, "oracle", "192.0.2.5", 1, invalid_user=True)
    )
    assert f.synthesized
    assert f.invalid_user
    assert f.source_failures == 1
    # A connection that failed twice then closed: two failures, not three.
    det.observe(failed("root", addr="192.0.2.6", port=2))
    det.observe(failed("root", addr="192.0.2.6", port=2))
    assert det.observe(Record(RecordKind.MAX_ATTEMPTS, "root", "192.0.2.6", 2)) == []
    assert det.observe(Record(RecordKind.CLOSED_PREAUTH, "root", "192.0.2.6", 2)) == []
    (f,) = det.observe(failed("root", addr="192.0.2.6", port=3))
    assert f.source_failures == 3
    # PAM lines annotate only.
    assert det.observe(Record(RecordKind.PAM_FAILURE, "root", "192.0.2.6", 0)) == []


def test_repeated_message_counts_each(clock: Clock) -> None:
    det = AuthDetector(clock=clock)
    out = det.observe(failed("root", count=3))
    assert [f.source_failures for f in out] == [1, 2, 3]


def test_log_time_is_used_and_never_goes_back(clock: Clock) -> None:
    det = AuthDetector(AuthDetectConfig(window=timedelta(seconds=30)), clock=clock)
    (a,) = det.observe(failed("root"), time_ns=T0 - 100 * S)
    assert a.time_ns == T0 - 100 * S
    (b,) = det.observe(failed("root"), time_ns=T0)
    assert b.source_failures == 1  # the first one is 100 s older: out of the window
    (c,) = det.observe(failed("root"), time_ns=T0 - 200 * S)  # out of order: counted now
    assert c.source_failures == 2


def test_lines_from_file_and_journal(clock: Clock) -> None:
    det = AuthDetector(clock=clock)
    out = det.observe_line(
        LogLine(
            "2023-11-14T22:13:20+00:00 h sshd[7]:"
            " Failed password for root from 192.0.2.1 port 9 ssh2"
        )
    )
    assert len(out) == 1
    assert out[0].service_pid == 7
    assert out[0].time_ns == T0
    assert out[0].log_source == "file"
    j = LogLine(
        "Accepted publickey for bob from 192.0.2.2 port 10 ssh2: ED25519 SHA256:k",
        source="journal",
        time_ns=T0 + S,
        pid=8,
        program="sshd",
    )
    (ok,) = det.observe_line(j)
    assert ok.method is Method.PUBLICKEY
    assert ok.key_fingerprint == "SHA256:k"
    assert finding_to_event(ok).auth_event.log_source == pb.AUTH_LOG_SOURCE_JOURNAL
    other = LogLine("Failed password for x from 1.2.3.4 port 1", source="journal", program="su")
    assert det.observe_line(other) == []
    assert det.observe_line(LogLine("Server listening on :: port 22.")) == []
    assert det.unparsed == 2


def test_windows_and_history_are_bounded(clock: Clock) -> None:
    cfg = AuthDetectConfig(max_sources=50, history_max_users=3, history_addresses_per_user=2)
    det = AuthDetector(cfg, clock=clock)
    for i in range(500):
        det.observe(failed(f"u{i}", addr=f"10.0.{i // 256}.{i % 256}"))
    assert len(det._by_source) <= 50
    assert len(det._by_user) <= 50
    for addr in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        det.observe(accepted("alice", addr=addr))
    assert det.history.addresses("alice") == ("192.0.2.2", "192.0.2.3")
    (again,) = det.observe(accepted("alice", addr="192.0.2.1"))
    assert again.new_source  # forgotten (least recently used): reads as new, by design
    for user in ("b", "c", "d"):
        det.observe(accepted(user))
    assert len(det.history) == 3
    assert det.history.addresses("alice") == ()


def test_history_persists(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "history.json"
    det = AuthDetector(clock=clock, history=load_history(path))
    det.observe(accepted("alice"))
    assert det.history.changed
    save_history(path, det.history)
    assert not det.history.changed
    # A restart: the address is known.
    det2 = AuthDetector(clock=clock, history=load_history(path))
    (f,) = det2.observe(accepted("alice"))
    assert not f.new_source
    assert f.previous_login_ns == T0
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="version"):
        load_history(path)
    round_trip = LoginHistory.from_json(det2.history.to_json())
    assert round_trip.last_login("alice", "203.0.113.9") == T0


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="window"):
        AuthDetectConfig(window=timedelta(0))
    with pytest.raises(ConfigError, match="burst_failures"):
        AuthDetectConfig(burst_failures=0)


def test_event_summary_bounds_attacker_text(clock: Clock) -> None:
    det = AuthDetector(clock=clock)
    (f,) = det.observe(failed("x" * 200))
    ev = finding_to_event(f)
    assert ev.auth_event.user == "x" * 200
    assert len(ev.summary) < 300
    assert ev.time.ToNanoseconds() == T0
    assert ev.category == cls.CATEGORY_AUTHENTICATION
