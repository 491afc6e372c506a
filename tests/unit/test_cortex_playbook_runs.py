"""The run outbox in a real store, the planner's triggers and suppression, the payload shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from cortex.playbooks.definitions import EndpointRef, load_playbook_texts
from cortex.playbooks.payloads import render, thehive_alert
from cortex.playbooks.planner import Planner
from cortex.store import CheckpointSigner, SqliteEventStore, StoreConfig
from cortex.store.runs import DueStep, NewRun, NewStep, RunStateError, StepResult
from crypto import pki
from crypto.keyring import KeyManager
from mesh.ids import uuid7
from tests.unit.test_cortex_windows import assessment

ENDPOINTS = {"soar": EndpointRef("soar", False), "hive": EndpointRef("hive", True)}
PLAYBOOKS = """
- playbook: Two steps
  id: two
  suppress_for: 1h
  trigger:
    filter: 'severity >= HIGH'
    on: [created, updated]
  steps:
    - webhook: soar
    - thehive: hive
- playbook: Gated
  id: gated
  approval: true
  trigger:
    filter: 'state = OPEN'
  steps:
    - webhook: soar
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteEventStore]:
    ca = pki.create_ca("example.org")
    leaf = pki.issue_leaf(ca, "cortex", "c1")
    keys = KeyManager.create(tmp_path / "keys", "cortex")
    s = SqliteEventStore.open(
        StoreConfig(tmp_path / "store"), keys, signer=CheckpointSigner(leaf.key, leaf.cert),
        create=True,
    )  # fmt: skip
    yield s
    s.close()


def new_run(create_ns: int, steps: int = 2, *, approval: bool = False) -> NewRun:
    run_id = uuid7(create_ns / 1e9)
    return NewRun(
        run_id=run_id,
        playbook="two",
        assessment_id="a1",
        revision=1,
        record_id="r1",
        key_term=b"t" * 32,
        trigger="created: severity >= HIGH",
        create_ns=create_ns,
        steps=tuple(
            NewStep(f"webhook soar{i}", "soar", {"kind": "webhook"}, f"a1.1.two.{i + 1}")
            for i in range(steps)
        ),
        awaiting_approval=approval,
    )


def due(store: SqliteEventStore, now: int) -> list[DueStep]:
    return store.runs.due(now, limit=10, exclude=frozenset())


def test_a_run_walks_its_steps_and_a_failure_skips_the_rest(store: SqliteEventStore) -> None:
    store.append_batch("g", [], None, new_runs=[new_run(100), new_run(200)])
    first, second = due(store, 1_000)
    assert (first.index, second.index) == (0, 0)
    # A retry: pending again later, one attempt counted.
    store.runs.finish(first, StepResult(300, 310, False, "HTTP 503", retry_at_ns=5_000))
    assert [d.run_id for d in due(store, 1_000)] == [second.run_id]
    assert store.runs.next_due_ns() == 200
    # Delivered: the next step is due at once.
    (again,) = [d for d in due(store, 5_000) if d.run_id == first.run_id]
    assert again.attempts == 1
    store.runs.finish(again, StepResult(5_000, 5_010, True, "HTTP 200"))
    (step2,) = [d for d in due(store, 5_010) if d.run_id == first.run_id]
    assert step2.index == 1
    store.runs.finish(step2, StepResult(5_020, 5_030, True, "HTTP 201"))
    done = store.runs.get(first.run_id)
    assert done is not None
    assert done.state == "succeeded"
    assert (done.start_ns, done.end_ns) == (300, 5_030)
    assert [s.attempts for s in done.steps] == [2, 1]
    # The second run's first step fails for good: dead letter, the rest skipped.
    store.runs.finish(second, StepResult(400, 410, False, "HTTP 422: refused"))
    dead = store.runs.get(second.run_id)
    assert dead is not None
    assert dead.dead_letter
    assert dead.error == "step 1: HTTP 422: refused"
    assert [s.state for s in dead.steps] == ["failed", "skipped"]
    # Replay: from the failed step, attempts afresh; a run that did not fail is refused.
    replayed = store.runs.replay(second.run_id, 9_000)
    assert replayed.state == "running"
    assert [(s.state, s.attempts) for s in replayed.steps] == [("pending", 0), ("pending", 0)]
    assert [d.run_id for d in due(store, 9_000)] == [second.run_id]
    with pytest.raises(RunStateError, match="only a failed run"):
        store.runs.replay(first.run_id, 9_000)
    with pytest.raises(KeyError):
        store.runs.replay(uuid7(), 9_000)


def test_postponing_does_not_count_an_attempt(store: SqliteEventStore) -> None:
    store.append_batch("g", [], None, new_runs=[new_run(100, steps=1)])
    (d,) = due(store, 1_000)
    store.runs.finish(
        d, StepResult(200, 200, False, "circuit open", retry_at_ns=2_000, counts_attempt=False)
    )
    run = store.runs.get(d.run_id)
    assert run is not None
    assert run.state == "pending"
    assert run.steps[0].attempts == 0
    assert run.steps[0].next_ns == 2_000


def test_approval_and_rejection(store: SqliteEventStore) -> None:
    a, b = new_run(100, approval=True), new_run(200, approval=True)
    store.append_batch("g", [], None, new_runs=[a, b])
    assert not due(store, 10**12)
    approved = store.runs.decide(a.run_id, approve=True, actor="spiffe://x/operator/o", now_ns=500)
    assert approved.approved_by == "spiffe://x/operator/o"
    assert [d.run_id for d in due(store, 500)] == [a.run_id]
    rejected = store.runs.decide(b.run_id, approve=False, actor="o", now_ns=600)
    assert rejected.state == "cancelled"
    assert {s.state for s in rejected.steps} == {"skipped"}
    with pytest.raises(RunStateError):
        store.runs.decide(b.run_id, approve=True, actor="o", now_ns=700)


def test_endpoints_disabled_survive_a_reopen_and_a_replay_enables_them(
    store: SqliteEventStore, tmp_path: Path
) -> None:
    run = new_run(100, steps=1)
    store.append_batch("g", [], None, new_runs=[run])
    (d,) = due(store, 1_000)
    store.runs.finish(d, StepResult(200, 210, False, "HTTP 410 Gone"))
    store.runs.disable_endpoint("soar", "HTTP 410 Gone", 210)
    assert store.runs.disabled_endpoints() == {"soar": (210, "HTTP 410 Gone")}
    store.runs.replay(run.run_id, 300)
    assert store.runs.disabled_endpoints() == {}
    assert not store.runs.enable_endpoint("soar")


def test_runs_commit_with_their_records_or_not_at_all(store: SqliteEventStore) -> None:
    run = new_run(100)
    twice = replace(new_run(200), run_id=run.run_id)  # a conflicting run id: the batch fails
    store.append_batch("g", [], None, new_runs=[run])
    with pytest.raises(Exception, match="reuses"):
        store.append_batch("g", [], None, new_runs=[twice])
    assert [r.run_id for r in store.runs.list_all()] == [run.run_id]


def test_the_planner_triggers_copies_steps_and_suppresses_per_key() -> None:
    playbooks = load_playbook_texts([("p.yaml", PLAYBOOKS)], endpoints=ENDPOINTS, guardians={})
    now = [10**18]
    planner = Planner(playbooks, key_term=lambda k: k.encode(), clock=lambda: now[0])
    a = replace(assessment(None, state="open"), revision=1, correlation_key="host=web-01")
    runs = planner.plan([(a, "rec-1")])
    assert sorted(r.playbook for r in runs) == ["gated", "two"]
    two = next(r for r in runs if r.playbook == "two")
    assert [s.webhook_id for s in two.steps] == [f"{a.id}.1.two.1", f"{a.id}.1.two.2"]
    assert two.steps[1].spec == {"kind": "thehive", "endpoint": "hive", "format": "thehive",
                                 "tlp": "amber"}  # fmt: skip
    assert two.trigger == "created: severity >= HIGH"
    assert next(r for r in runs if r.playbook == "gated").awaiting_approval
    # Revision 2 (an update) of the same key within the hour: `two` suppressed; `gated` does
    # not trigger on updates.
    now[0] += int(timedelta(minutes=30).total_seconds() * 1e9)
    assert planner.plan([(replace(a, revision=2), "rec-2")]) == []
    assert planner.suppressed == 1
    other = replace(a, id="b", correlation_key="host=db-01", revision=2)
    assert [r.playbook for r in planner.plan([(other, "rec-3")])] == ["two"]
    # After the window it runs again; a restart remembers the last runs from the store.
    now[0] += int(timedelta(minutes=31).total_seconds() * 1e9)
    assert [r.playbook for r in planner.plan([(replace(a, revision=3), "rec-4")])] == ["two"]
    fresh = Planner(playbooks, key_term=lambda k: k.encode(), clock=lambda: now[0])
    fresh.remember({("two", b"host=web-01"): now[0]})
    assert fresh.plan([(replace(a, revision=4), "rec-5")]) == []


def test_payloads_are_deterministic_and_shaped_for_their_receiver() -> None:
    a = replace(assessment(None, state="open"), revision=1, mitre=("T1110.004",))
    body = render("json", a, "created", [])
    assert body == render("json", a, "created", [])
    doc = json.loads(body)
    assert doc["type"] == "assessment.created"
    assert doc["data"]["name"] == a.name
    finding = json.loads(render("ocsf", a, "created", []))
    assert finding["class_uid"] == 2004
    alert = thehive_alert(a, [], "red")
    assert alert["sourceRef"] == a.id
    assert (alert["type"], alert["source"]) == ("qsc-assessment", "qsc-cortex")
    assert (alert["severity"], alert["tlp"]) == (3, 4)
    assert "attack:T1110.004" in alert["tags"]
    assert "Confidence" in alert["description"]


def test_retention_drops_ended_runs_and_keeps_work(store: SqliteEventStore) -> None:
    done, dead, waiting = new_run(100, steps=1), new_run(200, steps=1), new_run(300, steps=1)
    store.append_batch("g", [], None, new_runs=[done, dead, waiting])
    by = {d.run_id: d for d in due(store, 1_000)}
    store.runs.finish(by[done.run_id], StepResult(400, 410, True, "HTTP 200"))
    store.runs.finish(by[dead.run_id], StepResult(400, 410, False, "HTTP 400"))
    with store.runs._transaction() as conn:  # what `retain` runs inside its transaction
        from cortex.store.runs import delete_ended

        assert delete_ended(conn, 10**6) == 1
    assert {r.run_id for r in store.runs.list_all()} == {dead.run_id, waiting.run_id}


def test_listing_pages_filters_and_refuses_a_token_of_another_filter(
    store: SqliteEventStore,
) -> None:
    from cortex.errors import FilterError, PageTokenError, PlaybookRunNotFoundError
    from cortex.playbooks.run_queries import RunQueries

    made = [new_run(100 * i, steps=1) for i in range(1, 6)]
    store.append_batch("g", [], None, new_runs=made)
    (first, *_) = due(store, 10**6)
    store.runs.finish(first, StepResult(1, 2, False, "HTTP 400"))
    q = RunQueries(store.runs, store.store_id, b"k" * 32)
    page1 = q.list(2, "", "", "")
    assert [r.run_id for r in page1.runs] == [made[4].run_id, made[3].run_id]
    assert page1.total_size == 5
    page2 = q.list(2, page1.next_page_token, "", "")
    page3 = q.list(2, page2.next_page_token, "", "")
    assert [r.run_id for r in page2.runs + page3.runs] == [m.run_id for m in made[2::-1]]
    assert page3.next_page_token == ""
    oldest = q.list(1, "", "", "create_time")
    assert oldest.runs[0].run_id == made[0].run_id
    dead = q.list(0, "", 'dead_letter = true AND target = "soar"', "")
    assert [r.run_id for r in dead.runs] == [first.run_id]
    assert q.list(0, "", "state = RUN_STATE_PENDING", "").total_size == 4
    with pytest.raises(PageTokenError):
        q.list(2, page1.next_page_token, "state = PENDING", "")
    with pytest.raises(FilterError):
        q.list(0, "", "colour = red", "")
    with pytest.raises(FilterError):
        q.list(0, "", "", "playbook")
    with pytest.raises(PlaybookRunNotFoundError):
        q.get(f"playbookRuns/{uuid7()}")
    assert q.get(f"playbookRuns/{first.run_id}").dead_letter
