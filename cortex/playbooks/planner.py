"""Which runs an assessment change starts: triggers, suppression, the steps as the run keeps them.

    planner = Planner(playbooks, key_term=store_term, clock=time.time_ns)
    planner.remember(store.runs.latest_by_key(since_ns))     # suppression survives restarts
    new_runs = planner.plan([(assessment, record_event_id), ...])
    store.append_batch(own_id, records, cursor, new_runs=new_runs)   # one transaction

A change is `created` for an assessment's first revision, `updated` for every later one
(more evidence, a verdict, the window's end). A playbook runs when its trigger holds, unless it
ran for the same correlation key within its `suppress_for` (counted per playbook: two
playbooks on one key each run). A run copies its steps (kind, target, format, arguments) from
the playbook as it is now, so a reload that edits or removes the playbook does not change runs
already made. Each step's `webhook_id` (assessment id, revision, playbook, step) is stable
across retries and restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from cortex.assessments import Assessment
from cortex.playbooks.definitions import GuardianStep, Playbook, PlaybookSet, SendStep, Step
from cortex.playbooks.signing import webhook_id
from cortex.store.runs import NewRun, NewStep
from mesh.ids import uuid7
from mesh.logs import log_event

__all__ = ["Planner", "change_of", "step_name", "step_spec"]

_log = logging.getLogger("qsc.cortex.playbooks")


def change_of(a: Assessment) -> str:
    return "created" if a.revision == 1 else "updated"


def step_name(step: Step) -> str:
    if isinstance(step, GuardianStep):
        return f"guardian {step.guardian} {step.action}"
    return f"{step.kind} {step.endpoint}"


def step_spec(step: Step) -> dict[str, Any]:
    """The step as the run keeps it (JSON)."""
    if isinstance(step, SendStep):
        return {
            "kind": step.kind,
            "endpoint": step.endpoint,
            "format": step.format,
            "tlp": step.tlp,
        }
    spec = asdict(step)
    spec["paths"] = list(step.paths)
    return {"kind": "guardian", **spec}


def _target(step: Step) -> str:
    return step.guardian if isinstance(step, GuardianStep) else step.endpoint


class Planner:
    def __init__(
        self,
        playbooks: PlaybookSet,
        *,
        key_term: Callable[[str], bytes],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.playbooks = playbooks
        self._key_term = key_term
        self._clock = clock
        self._last: dict[tuple[str, bytes], int] = {}  # (playbook, key term) -> last run ns
        self.suppressed = 0

    def remember(self, latest: Mapping[tuple[str, bytes], int]) -> None:
        """The newest run per (playbook, key term) from the store (at start)."""
        for k, v in latest.items():
            self._last[k] = max(v, self._last.get(k, 0))

    def plan(self, changes: Sequence[tuple[Assessment, str]]) -> list[NewRun]:
        """The runs `changes` start: (assessment revision, id of its stored record) each."""
        runs = []
        for a, record_id in changes:
            change = change_of(a)
            for p in self.playbooks.triggered_by(a, change):  # type: ignore[arg-type]
                run = self._run(p, a, record_id, change)
                if run is not None:
                    runs.append(run)
        return runs

    def _run(self, p: Playbook, a: Assessment, record_id: str, change: str) -> NewRun | None:
        now = self._clock()
        term = self._key_term(a.correlation_key)
        last = self._last.get((p.id, term))
        window = int(p.suppress_for.total_seconds() * 1e9)
        if window and last is not None and now - last < window:
            self.suppressed += 1
            log_event(
                _log,
                "playbook suppressed",
                playbook=p.id,
                assessment=a.name,
                revision=a.revision,
                ran_s_ago=round((now - last) / 1e9, 1),
            )
            return None
        self._last[(p.id, term)] = now
        steps = tuple(
            NewStep(
                step_name(s),
                _target(s),
                step_spec(s),
                webhook_id(a.id, a.revision, p.id, i + 1),
            )
            for i, s in enumerate(p.steps)
        )
        return NewRun(
            run_id=uuid7(now / 1e9),
            playbook=p.id,
            assessment_id=a.id,
            revision=a.revision,
            record_id=record_id,
            key_term=term,
            trigger=f"{change}: {p.trigger.canonical or 'every assessment'}",
            create_ns=now,
            steps=steps,
            awaiting_approval=p.approval,
        )
