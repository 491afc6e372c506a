"""Playbook runs in the store: the durable delivery outbox and what each run did.

    store.append_batch(own_id, records, cursor, runs=[NewRun(...)])  # one transaction
    due = store.runs.due(now_ns, limit=32)          # steps whose time has come
    store.runs.finish(due[0], StepResult(...))      # an attempt's outcome, one transaction
    store.runs.get(run_id); store.runs.list_all()   # GetPlaybookRun / ListPlaybookRuns

A run is written in the transaction that stores the assessment change triggering it, so a
crash can never leave a change without its runs or a run without its change. Runs are state,
not evidence: they sit beside the hash-chained events, outside the chain (a run's history is
mutable by nature), and hold no secret and no assessment content. The payload is rendered
from the stored, sealed assessment record (`record_id`) at each attempt; a run names its
correlation key only by a keyed term (`key_term`, for suppression).

States (text in the database, the API's RunState names in lower case):

    run:  awaiting_approval -> pending -> running -> succeeded | failed
          awaiting_approval -> cancelled (rejected)        failed -> running (replayed)
    step: pending (next_ns set: due then; unset: waits for the steps before it, or approval)
          -> succeeded | failed;  later steps of a failed run -> skipped

An attempt in flight is not written: a crash mid-attempt leaves the step pending with the same
`webhook_id`, so it is attempted again after a restart and the receiver deduplicates it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

__all__ = [
    "RUN_SCHEMA",
    "DueStep",
    "NewRun",
    "NewStep",
    "RunRecord",
    "RunStateError",
    "RunTable",
    "StepRecord",
    "StepResult",
]

RunState = Literal["awaiting_approval", "pending", "running", "succeeded", "failed", "cancelled"]
StepState = Literal["pending", "succeeded", "failed", "skipped"]

RUN_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS playbook_runs (
    run_id TEXT PRIMARY KEY,
    playbook TEXT NOT NULL,
    assessment_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    key_term BLOB NOT NULL,
    trigger TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    create_ns INTEGER NOT NULL,
    start_ns INTEGER,
    end_ns INTEGER,
    approved_by TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS playbook_runs_created ON playbook_runs (create_ns);
CREATE INDEX IF NOT EXISTS playbook_runs_key ON playbook_runs (playbook, key_term, create_ns);
CREATE TABLE IF NOT EXISTS playbook_steps (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    start_ns INTEGER,
    end_ns INTEGER,
    next_ns INTEGER,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS playbook_steps_due ON playbook_steps (next_ns)
    WHERE state = 'pending' AND next_ns IS NOT NULL;
CREATE TABLE IF NOT EXISTS playbook_endpoints (
    name TEXT PRIMARY KEY,
    disabled_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
) WITHOUT ROWID;
"""
MAX_MESSAGE_CHARS: Final = 500
_RUN_COLUMNS: Final = (
    "run_id, playbook, assessment_id, revision, record_id, trigger, state, error, create_ns, "
    "start_ns, end_ns, approved_by"
)
_STEP_COLUMNS: Final = (
    "run_id, idx, name, target, spec, webhook_id, state, attempts, message, start_ns, end_ns, "
    "next_ns"
)


class RunStateError(Exception):
    """A run is not in a state that allows what was asked (replay a run that did not fail...)."""


@dataclass(frozen=True)
class NewStep:
    name: str  # as the API shows it: `webhook soar`, `guardian beta-web-01 verify_backup`
    target: str  # the endpoint or guardian id it reaches
    spec: dict[str, Any]  # the step as the playbook defined it (JSON): runs outlive reloads
    webhook_id: str


@dataclass(frozen=True)
class NewRun:
    run_id: str
    playbook: str
    assessment_id: str
    revision: int
    record_id: str  # the stored assessment_change event the run delivers
    key_term: bytes  # keyed term of the correlation key (suppression)
    trigger: str  # what started it: `created: severity >= HIGH`
    create_ns: int
    steps: tuple[NewStep, ...]
    awaiting_approval: bool = False


@dataclass(frozen=True)
class StepRecord:
    index: int
    name: str
    target: str
    spec: dict[str, Any]
    webhook_id: str
    state: StepState
    attempts: int
    message: str
    start_ns: int | None
    end_ns: int | None
    next_ns: int | None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    playbook: str
    assessment_id: str
    revision: int
    record_id: str
    trigger: str
    state: RunState
    error: str
    create_ns: int
    start_ns: int | None
    end_ns: int | None
    approved_by: str
    steps: tuple[StepRecord, ...] = ()

    @property
    def name(self) -> str:
        return f"playbookRuns/{self.run_id}"

    @property
    def dead_letter(self) -> bool:
        """Failed for good: kept with its last error until replayed."""
        return self.state == "failed"


@dataclass(frozen=True)
class DueStep:
    """A step whose attempt is due, with what the attempt needs to know of its run."""

    run_id: str
    index: int
    target: str
    spec: dict[str, Any]
    webhook_id: str
    attempts: int
    start_ns: int | None
    playbook: str
    assessment_id: str
    revision: int
    record_id: str
    change: str


@dataclass(frozen=True)
class StepResult:
    """An attempt's outcome: `retry_at_ns` set means "pending again then"; otherwise the step
    ended (`succeeded` or not)."""

    started_ns: int
    ended_ns: int
    succeeded: bool
    message: str
    retry_at_ns: int | None = None
    counts_attempt: bool = True  # False: postponed without trying (breaker open, no slot)


def insert_runs(conn: sqlite3.Connection, runs: Sequence[NewRun]) -> None:
    """Write `runs` inside the caller's transaction (the store's append_batch)."""
    run_rows = []
    step_rows = []
    for r in runs:
        state: RunState = "awaiting_approval" if r.awaiting_approval else "pending"
        run_rows.append(
            (
                r.run_id,
                r.playbook,
                r.assessment_id,
                r.revision,
                r.record_id,
                r.key_term,
                r.trigger,
                state,
                r.create_ns,
            )
        )
        for i, s in enumerate(r.steps):
            due = r.create_ns if i == 0 and not r.awaiting_approval else None
            step_rows.append(
                (r.run_id, i, s.name, s.target, json.dumps(s.spec), s.webhook_id, "pending", due)
            )
    conn.executemany(
        "INSERT INTO playbook_runs (run_id, playbook, assessment_id, revision, record_id, "
        "key_term, trigger, state, create_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        run_rows,
    )
    conn.executemany(
        "INSERT INTO playbook_steps (run_id, idx, name, target, spec, webhook_id, state, "
        "next_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        step_rows,
    )


def delete_ended(conn: sqlite3.Connection, before_ns: int) -> int:
    """Remove runs that succeeded or were cancelled before `before_ns` (retention)."""
    ended = (
        "SELECT run_id FROM playbook_runs WHERE state IN ('succeeded', 'cancelled') AND end_ns < ?"
    )
    conn.execute(f"DELETE FROM playbook_steps WHERE run_id IN ({ended})", (before_ns,))  # noqa: S608 - table and column names are module constants; values are bound
    return int(
        conn.execute(
            "DELETE FROM playbook_runs WHERE state IN ('succeeded', 'cancelled') AND end_ns < ?",
            (before_ns,),
        ).rowcount
    )


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


class RunTable:
    """The runs of one store (`SqliteEventStore.runs`). Writes go through the store's writer
    transaction (its lock, its connection); reads through its reader. A store opened read-only
    whose database predates playbooks reads as having no runs."""

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
        reader: sqlite3.Connection,
        read_lock: threading.Lock,
    ) -> None:
        self._transaction = transaction
        self._reader = reader
        self._read_lock = read_lock

    # -- reading -----------------------------------------------------------------------------

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                return list(self._reader.execute(sql, args))
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # a store written before playbooks existed
                raise

    def get(self, run_id: str) -> RunRecord | None:
        sql = f"SELECT {_RUN_COLUMNS} FROM playbook_runs WHERE run_id = ?"  # noqa: S608 (constants)
        rows = self._read(sql, (run_id,))
        if not rows:
            return None
        return _run(rows[0], self._steps(run_id))

    def _steps(self, run_id: str) -> tuple[StepRecord, ...]:
        sql = f"SELECT {_STEP_COLUMNS} FROM playbook_steps WHERE run_id = ? ORDER BY idx"  # noqa: S608 - table and column names are module constants; values are bound
        rows = self._read(sql, (run_id,))
        return tuple(_step(r) for r in rows)

    def list_all(self, *, with_steps: bool = False) -> Iterator[RunRecord]:
        """Every run, oldest first (ListPlaybookRuns filters and pages them in memory)."""
        sql = f"SELECT {_RUN_COLUMNS} FROM playbook_runs ORDER BY create_ns, run_id"  # noqa: S608 - table and column names are module constants; values are bound
        rows = self._read(sql)
        steps: dict[str, list[StepRecord]] = {}
        if with_steps:
            sql = f"SELECT {_STEP_COLUMNS} FROM playbook_steps ORDER BY run_id, idx"  # noqa: S608 - table and column names are module constants; values are bound
            for r in self._read(sql):
                steps.setdefault(r[0], []).append(_step(r))
        for row in rows:
            yield _run(row, tuple(steps.get(row[0], ())))

    def with_steps(self, runs: Sequence[RunRecord]) -> list[RunRecord]:
        return [_with(r, self._steps(r.run_id)) for r in runs]

    def due(self, now_ns: int, *, limit: int, exclude: frozenset[tuple[str, int]]) -> list[DueStep]:
        """Steps due by `now_ns`, earliest first, not counting `exclude` (those in flight)."""
        rows = self._read(
            "SELECT s.run_id, s.idx, s.target, s.spec, s.webhook_id, s.attempts, s.start_ns, "
            "r.playbook, r.assessment_id, r.revision, r.record_id, r.trigger "
            "FROM playbook_steps s JOIN playbook_runs r ON r.run_id = s.run_id "
            "WHERE s.state = 'pending' AND s.next_ns IS NOT NULL AND s.next_ns <= ? "
            "AND r.state IN ('pending', 'running') ORDER BY s.next_ns LIMIT ?",
            (now_ns, limit + len(exclude)),
        )
        due = [
            DueStep(
                r[0],
                r[1],
                r[2],
                json.loads(r[3]),
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                r[11].partition(":")[0],
            )
            for r in rows
            if (r[0], r[1]) not in exclude
        ]
        return due[:limit]

    def next_due_ns(self) -> int | None:
        rows = self._read(
            "SELECT min(s.next_ns) FROM playbook_steps s JOIN playbook_runs r "
            "ON r.run_id = s.run_id WHERE s.state = 'pending' AND s.next_ns IS NOT NULL "
            "AND r.state IN ('pending', 'running')"
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def latest_by_key(self, since_ns: int) -> dict[tuple[str, bytes], int]:
        """(playbook, key term) -> the newest run's create_ns since `since_ns` (suppression)."""
        rows = self._read(
            "SELECT playbook, key_term, max(create_ns) FROM playbook_runs WHERE create_ns >= ? "
            "GROUP BY playbook, key_term",
            (since_ns,),
        )
        return {(r[0], bytes(r[1])): int(r[2]) for r in rows}

    def disabled_endpoints(self) -> dict[str, tuple[int, str]]:
        rows = self._read("SELECT name, disabled_ns, reason FROM playbook_endpoints")
        return {r[0]: (int(r[1]), r[2]) for r in rows}

    def counts(self) -> dict[str, int]:
        return {
            r[0]: int(r[1])
            for r in self._read("SELECT state, count(*) FROM playbook_runs GROUP BY state")
        }

    # -- writing -----------------------------------------------------------------------------

    def finish(self, step: DueStep, result: StepResult) -> None:
        """Record one attempt's outcome (and move the run on) in one transaction."""
        message = _short(result.message)
        with self._transaction() as conn:
            started = step.start_ns if step.start_ns is not None else result.started_ns
            attempts = step.attempts + (1 if result.counts_attempt else 0)
            if result.retry_at_ns is not None:
                conn.execute(
                    "UPDATE playbook_steps SET attempts = ?, message = ?, start_ns = ?, "
                    "next_ns = ? WHERE run_id = ? AND idx = ? AND state = 'pending'",
                    (
                        attempts,
                        message,
                        started if result.counts_attempt else step.start_ns,
                        result.retry_at_ns,
                        step.run_id,
                        step.index,
                    ),
                )
                if result.counts_attempt:
                    _started(conn, step.run_id, started)
                return
            state: StepState = "succeeded" if result.succeeded else "failed"
            conn.execute(
                "UPDATE playbook_steps SET state = ?, attempts = ?, message = ?, start_ns = ?, "
                "end_ns = ?, next_ns = NULL WHERE run_id = ? AND idx = ? AND state = 'pending'",
                (state, attempts, message, started, result.ended_ns, step.run_id, step.index),
            )
            _started(conn, step.run_id, started)
            if not result.succeeded:
                conn.execute(
                    "UPDATE playbook_steps SET state = 'skipped', next_ns = NULL "
                    "WHERE run_id = ? AND idx > ?",
                    (step.run_id, step.index),
                )
                conn.execute(
                    "UPDATE playbook_runs SET state = 'failed', error = ?, end_ns = ? "
                    "WHERE run_id = ?",
                    (f"step {step.index + 1}: {message}", result.ended_ns, step.run_id),
                )
                return
            moved = conn.execute(
                "UPDATE playbook_steps SET next_ns = ? WHERE run_id = ? AND idx = ? "
                "AND state = 'pending'",
                (result.ended_ns, step.run_id, step.index + 1),
            ).rowcount
            if not moved:
                conn.execute(
                    "UPDATE playbook_runs SET state = 'succeeded', error = '', end_ns = ? "
                    "WHERE run_id = ?",
                    (result.ended_ns, step.run_id),
                )

    def replay(self, run_id: str, now_ns: int) -> RunRecord:
        """A failed run (a dead letter) from its failed step again, attempts counted afresh;
        the endpoint it failed on is enabled again (replaying says the receiver is back)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT state FROM playbook_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise KeyError(run_id)
            if row[0] != "failed":
                raise RunStateError(
                    f"playbookRuns/{run_id} is {row[0]}: only a failed run is replayed"
                )
            conn.execute(
                "DELETE FROM playbook_endpoints WHERE name IN (SELECT target FROM "
                "playbook_steps WHERE run_id = ? AND state = 'failed')",
                (run_id,),
            )
            first = conn.execute(
                "SELECT min(idx) FROM playbook_steps WHERE run_id = ? AND state = 'failed'",
                (run_id,),
            ).fetchone()[0]
            conn.execute(
                "UPDATE playbook_steps SET state = 'pending', attempts = 0, end_ns = NULL, "
                "next_ns = CASE WHEN idx = ? THEN ? ELSE NULL END "
                "WHERE run_id = ? AND state IN ('failed', 'skipped')",
                (first, now_ns, run_id),
            )
            conn.execute(
                "UPDATE playbook_runs SET state = 'running', error = '', end_ns = NULL "
                "WHERE run_id = ?",
                (run_id,),
            )
        found = self.get(run_id)
        assert found is not None
        return found

    def decide(self, run_id: str, *, approve: bool, actor: str, now_ns: int) -> RunRecord:
        """Approve (its first step becomes due) or reject (cancelled) a run awaiting approval."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT state FROM playbook_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise KeyError(run_id)
            if row[0] != "awaiting_approval":
                raise RunStateError(f"playbookRuns/{run_id} is {row[0]}, not awaiting approval")
            if approve:
                conn.execute(
                    "UPDATE playbook_runs SET state = 'pending', approved_by = ? WHERE run_id = ?",
                    (actor, run_id),
                )
                conn.execute(
                    "UPDATE playbook_steps SET next_ns = ? WHERE run_id = ? AND idx = 0",
                    (now_ns, run_id),
                )
            else:
                conn.execute(
                    "UPDATE playbook_runs SET state = 'cancelled', approved_by = ?, end_ns = ?, "
                    "error = 'rejected' WHERE run_id = ?",
                    (actor, now_ns, run_id),
                )
                conn.execute(
                    "UPDATE playbook_steps SET state = 'skipped' WHERE run_id = ?", (run_id,)
                )
        found = self.get(run_id)
        assert found is not None
        return found

    def disable_endpoint(self, name: str, reason: str, now_ns: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO playbook_endpoints (name, disabled_ns, reason) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, now_ns, _short(reason)),
            )

    def enable_endpoint(self, name: str) -> bool:
        with self._transaction() as conn:
            return bool(
                conn.execute("DELETE FROM playbook_endpoints WHERE name = ?", (name,)).rowcount
            )


def _started(conn: sqlite3.Connection, run_id: str, started_ns: int) -> None:
    conn.execute(
        "UPDATE playbook_runs SET state = 'running', start_ns = coalesce(start_ns, ?) "
        "WHERE run_id = ? AND state = 'pending'",
        (started_ns, run_id),
    )


def _run(row: Sequence[Any], steps: tuple[StepRecord, ...]) -> RunRecord:
    return RunRecord(
        row[0], row[1], row[2], int(row[3]), row[4], row[5], row[6], row[7], int(row[8]),
        row[9], row[10], row[11], steps,
    )  # fmt: skip


def _with(run: RunRecord, steps: tuple[StepRecord, ...]) -> RunRecord:
    return replace(run, steps=steps)


def _step(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        int(row[1]), row[2], row[3], json.loads(row[4]), row[5], row[6], int(row[7]), row[8],
        row[9], row[10], row[11],
    )  # fmt: skip
