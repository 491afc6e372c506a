"""The heal proposal queue (approve/reject/expire, persisted and sealed), the loop guard's
backoff ledger, and their protobuf conversion."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from beta.errors import BetaInvalidArgumentError, BetaNotFoundError
from beta.heal import (
    BackoffConfig,
    HealConflictError,
    HealExpiredError,
    HealQueue,
    HealRecord,
    HealState,
    HealStateTamperedError,
    LoopGuard,
    ValidatorResult,
)
from beta.heal.convert import (
    proposal_to_proto,
    record_to_event,
    states_from_proto,
)
from beta.heal.queue import EXPIRED_COMMENT
from crypto.keyring import KeyManager
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import heal_details_pb2 as pb

H1 = b"\x01" * 32
H2 = b"\x02" * 32


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "beta")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _queue(tmp_path: Path, keys: KeyManager, clock: Clock, **kw: object) -> HealQueue:
    return HealQueue(tmp_path / "heal" / "queue.qsc", keys, clock=clock, **kw)  # type: ignore[arg-type]


def _propose(q: HealQueue, path: str = "/etc/hosts", version: int = 1, cur: bytes = H2) -> str:
    return q.propose(path, baseline_version=version, baseline_blake3=H1, current_blake3=cur).id


def test_propose_list_get(tmp_path: Path, keys: KeyManager, clock: Clock, umask0: None) -> None:
    q = _queue(tmp_path, keys, clock)
    pid = _propose(q)
    p = q.get(pid)
    assert p.state is HealState.PROPOSED
    assert p.policy == "approve"
    assert (p.baseline_blake3, p.current_blake3, p.baseline_version) == (H1, H2, 1)
    assert p.expire_time == clock.now + 24 * 3600
    assert q.pending("/etc/hosts") == p
    page, token = q.list()
    assert page == (p,)
    assert token == ""
    assert stat.S_IMODE(q.path.stat().st_mode) == 0o600
    with pytest.raises(BetaNotFoundError):
        q.get("no-such-id")


def test_one_pending_proposal_per_path_and_version(
    tmp_path: Path, keys: KeyManager, clock: Clock
) -> None:
    q = _queue(tmp_path, keys, clock)
    first = _propose(q)
    clock.now += 5
    again = q.propose(
        "/etc/hosts", baseline_version=1, baseline_blake3=H1, current_blake3=b"\x03" * 32
    )
    assert again.id == first
    assert again.current_blake3 == b"\x03" * 32
    assert len(q.list()[0]) == 1
    assert _propose(q, version=2) != first  # a new baseline version is a new heal


def test_approve_then_record(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock)
    pid = _propose(q)
    clock.now += 60
    p = q.approve(pid, "spiffe://qsc/operator/alice", "looks right")
    assert p.state is HealState.APPROVED
    assert (p.actor, p.comment, p.update_time) == (
        "spiffe://qsc/operator/alice",
        "looks right",
        clock.now,
    )
    with pytest.raises(HealConflictError, match="already approved"):
        q.approve(pid, "spiffe://qsc/operator/bob")
    with pytest.raises(HealConflictError):
        q.reject(pid, "spiffe://qsc/operator/bob", "too late")
    outcome = HealRecord("/etc/hosts", HealState.VERIFIED, proposal_id=pid, after_blake3=H1)
    done = q.record(pid, outcome)
    assert done.state is HealState.VERIFIED
    assert done.last_action == outcome
    with pytest.raises(HealConflictError):
        q.record(pid, outcome)


def test_reject_leaves_it_decided(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock)
    pid = _propose(q)
    p = q.reject(pid, "spiffe://qsc/operator/alice", "planned change")
    assert (p.state, p.comment) == (HealState.REJECTED, "planned change")
    assert q.pending("/etc/hosts") is None
    with pytest.raises(HealConflictError, match="rejected"):
        q.approve(pid, "spiffe://qsc/operator/alice")
    assert _propose(q) != pid  # the next tampering proposes again


def test_approval_expires(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock, ttl=timedelta(minutes=30))
    pid = _propose(q)
    clock.now += 30 * 60 + 1
    with pytest.raises(HealExpiredError):
        q.approve(pid, "spiffe://qsc/operator/alice")
    p = q.get(pid)
    assert (p.state, p.comment, p.actor) == (HealState.REJECTED, EXPIRED_COMMENT, "")
    other = _propose(q, "/etc/passwd")
    clock.now += 31 * 60
    assert [p.id for p in q.expire()] == [other]
    assert q.expire() == ()
    # A new tampering after expiry starts a fresh proposal with a fresh window.
    fresh = q.get(_propose(q, "/etc/passwd"))
    assert fresh.id != other
    assert fresh.expire_time == clock.now + 30 * 60


def test_persists_across_restart(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock)
    a = _propose(q, "/etc/a")
    b = _propose(q, "/etc/b")
    q.approve(a, "spiffe://qsc/operator/alice")
    validator = ValidatorResult("sshd -t -f x", 0, True, "ok")
    q.record(a, HealRecord("/etc/a", HealState.FAILED, validator=validator, failure_reason="x"))
    q2 = _queue(tmp_path, keys, clock)
    assert q2.get(a) == q.get(a)
    assert q2.get(b) == q.get(b)
    assert q2.get(a).last_action is not None
    assert q2.get(a).last_action.validator == validator  # type: ignore[union-attr]
    q2.reject(b, "spiffe://qsc/operator/bob")
    assert _queue(tmp_path, keys, clock).get(b).state is HealState.REJECTED


def test_tampered_queue_file_refused(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock)
    _propose(q)
    raw = q.path.read_bytes()
    q.path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(HealStateTamperedError):
        _queue(tmp_path, keys, clock)
    q.path.write_bytes(raw.replace(b"heal-queue", b"heal-guard", 1))  # the label is bound
    with pytest.raises(HealStateTamperedError):
        _queue(tmp_path, keys, clock)


def test_list_filters_and_pages_newest_first(
    tmp_path: Path, keys: KeyManager, clock: Clock
) -> None:
    q = _queue(tmp_path, keys, clock)
    ids = []
    for i in range(7):
        clock.now += 1
        ids.append(_propose(q, f"/etc/f{i}"))
    q.reject(ids[0], "op")
    page, token = q.list(page_size=3)
    assert [p.id for p in page] == ids[6:3:-1]
    assert token == ids[4]
    page, token = q.list(page_size=3, page_token=token)
    assert [p.id for p in page] == ids[3:0:-1]
    assert token == ids[1]
    page, token = q.list(page_size=3, page_token=token)
    assert [p.id for p in page] == [ids[0]]
    assert token == ""
    rejected, _ = q.list([HealState.REJECTED])
    assert [p.id for p in rejected] == [ids[0]]
    assert len(q.list([HealState.PROPOSED])[0]) == 6
    with pytest.raises(BetaInvalidArgumentError):
        q.list(page_token="bogus")


def test_oldest_decided_dropped_first(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock, max_proposals=3)
    a, b, c = (_propose(q, f"/etc/{n}") for n in "abc")
    q.reject(b, "op")
    d = _propose(q, "/etc/d")  # over the cap: the decided one goes, pending ones stay
    assert {p.id for p in q.list()[0]} == {a, c, d}


def test_loop_guard_backoff(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    cfg = BackoffConfig(initial=timedelta(minutes=1), maximum=timedelta(minutes=3), max_attempts=4)
    g = LoopGuard(tmp_path / "guard.qsc", keys, cfg, clock=clock)
    assert g.check("/etc/hosts", 1) is None
    assert g.record("/etc/hosts", 1, ok=True) == 1
    clock.now += 30
    assert "backing off" in (g.check("/etc/hosts", 1) or "")
    assert g.check("/etc/hosts", 2) is None  # a new baseline version starts over
    clock.now += 31
    assert g.check("/etc/hosts", 1) is None
    g.record("/etc/hosts", 1, ok=False)  # attempt 2: wait 2 min
    clock.now += 119
    assert g.check("/etc/hosts", 1) is not None
    clock.now += 2
    assert g.check("/etc/hosts", 1) is None
    g.record("/etc/hosts", 1, ok=True)  # attempt 3: wait min(4, 3) = 3 min
    clock.now += 181
    assert g.check("/etc/hosts", 1) is None
    g.record("/etc/hosts", 1, ok=True)  # attempt 4 = max
    clock.now += 10_000
    assert "not healing it again" in (g.check("/etc/hosts", 1) or "")
    # Persisted: a restart does not reset the count.
    g2 = LoopGuard(tmp_path / "guard.qsc", keys, cfg, clock=clock)
    assert g2.attempts("/etc/hosts", 1) == 4
    assert g2.check("/etc/hosts", 1) is not None
    g2.record("/etc/hosts", 2, ok=True)
    assert g2.attempts("/etc/hosts", 1) == 0
    assert g2.attempts("/etc/hosts", 2) == 1
    assert g2.record("/etc/hosts", 1, ok=True) == 0  # late news about an older version: ignored


def test_proposal_and_record_to_proto(tmp_path: Path, keys: KeyManager, clock: Clock) -> None:
    q = _queue(tmp_path, keys, clock)
    pid = _propose(q)
    q.approve(pid, "spiffe://qsc/operator/alice", "ok")
    rec = HealRecord(
        "/etc/hosts",
        HealState.VERIFIED,
        policy="approve",
        baseline_version=1,
        baseline_blake3=H1,
        vault_blake3=H1,
        vault_version=2,
        before_blake3=H2,
        after_blake3=H1,
        validator=ValidatorResult("true", 0, True, ""),
        actor="spiffe://qsc/operator/alice",
        proposal_id=pid,
        time=clock.now,
    )
    msg = proposal_to_proto(q.record(pid, rec))
    assert msg.id == pid
    assert msg.state == pb.HEAL_STATE_VERIFIED
    assert msg.policy == pb.HEAL_POLICY_APPROVE
    assert msg.last_action.after_blake3 == H1
    assert msg.last_action.validator.passed
    assert msg.create_time.seconds == int(q.get(pid).create_time)
    event = record_to_event(rec)
    assert event.WhichOneof("detail") == "heal_action"
    assert event.category == cls.CATEGORY_HEALING
    assert event.heal_action.before_blake3 == H2
    assert event.heal_action.vault_version == 2
    looped = record_to_event(rec.evolve(state=HealState.FAILED, loop_guard=True))
    assert looped.rule.id == "beta.heal.loop_guard"
    assert looped.severity == cls.SEVERITY_HIGH
    assert states_from_proto([pb.HEAL_STATE_PROPOSED, pb.HEAL_STATE_UNSPECIFIED]) == (
        HealState.PROPOSED,
    )
