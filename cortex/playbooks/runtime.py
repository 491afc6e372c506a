"""The Cortex's playbooks at run time: definitions, planner and runner over the store's runs.

    playbooks = PlaybookRuntime.load(config, store)   # secrets and files checked now
    await playbooks.start()
    runs = playbooks.plan([(assessment, record_id), ...])  # inside ingest.record's transaction
    playbooks.wake()                                       # after it committed
    await playbooks.reload(files, guardians)               # SIGHUP
    playbooks.replay(run_id) / playbooks.decide(run_id, approve=True, actor=spiffe_id)
    await playbooks.stop()

A start fails on an unreadable secret (PlaybookSecretError names the file, never its content)
or a playbook file that does not load (PlaybookDefinitionError, FILE:LINE); a reload that
fails keeps the playbooks as they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from cortex import assessment_records
from cortex.assessments import Assessment
from cortex.config import CortexConfig, GuardianSection
from cortex.playbooks.actions import GuardianActions
from cortex.playbooks.definitions import (
    MAX_SUPPRESS,
    PlaybookSet,
    endpoint_refs,
    load_playbooks,
)
from cortex.playbooks.endpoints import Endpoint
from cortex.playbooks.payloads import contributing
from cortex.playbooks.planner import Planner
from cortex.playbooks.runner import Loaded, Runner
from cortex.store.runs import NewRun, RunRecord
from cortex.store.sqlite import SqliteEventStore

__all__ = ["PlaybookRuntime"]


class PlaybookRuntime:
    def __init__(
        self,
        config: CortexConfig,
        store: SqliteEventStore,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        section = config.playbooks
        self._config = config
        self._store = store
        self._clock = clock
        self.endpoints = {e.name: Endpoint.of(e) for e in section.endpoints}
        self.playbooks = self._load(section.files, config.guardians)
        self.planner = Planner(self.playbooks, key_term=store.run_key_term, clock=clock)
        self.actions = GuardianActions(
            config.guardians, tls=config.server.tls, timeout=section.guardian_timeout
        )
        self.runner = Runner(
            store.runs,
            self.endpoints,
            self.actions,
            load=self._load_record,
            settings=section,
            clock=clock,
        )

    def _load(self, files: Sequence[Path], guardians: Sequence[GuardianSection]) -> PlaybookSet:
        refs = endpoint_refs(self._config.playbooks.endpoints)
        return load_playbooks(files, endpoints=refs, guardians={g.id: g.role for g in guardians})

    def _load_record(self, record_id: str) -> Loaded:
        event = self._store.get(record_id)
        if event is None:
            return None
        a = assessment_records.from_event(event)
        if a is None:
            return None
        return a, contributing(a, self._store.get)

    async def start(self) -> None:
        since = self._clock() - int(MAX_SUPPRESS / timedelta(microseconds=1)) * 1000
        latest = await asyncio.to_thread(self._store.runs.latest_by_key, since)
        self.planner.remember(latest)
        await self.runner.start()

    def plan(self, changes: Sequence[tuple[Assessment, str]]) -> list[NewRun]:
        return self.planner.plan(changes)

    def wake(self) -> None:
        self.runner.wake()

    async def reload(self, files: Sequence[Path], guardians: Sequence[GuardianSection]) -> None:
        playbooks = await asyncio.to_thread(self._load, files, guardians)
        self.playbooks = playbooks
        self.planner.playbooks = playbooks
        self.actions.configure(guardians)

    def replay(self, run_id: str) -> RunRecord:
        """A dead letter sent again from its failed step; the endpoint it failed on is
        enabled again (the operator says the receiver is back)."""
        replayed = self._store.runs.replay(run_id, self._clock())
        self.runner.reread_disabled()
        return replayed

    def decide(self, run_id: str, *, approve: bool, actor: str) -> RunRecord:
        decided = self._store.runs.decide(
            run_id, approve=approve, actor=actor, now_ns=self._clock()
        )
        self.runner.wake()
        return decided

    async def stop(self) -> None:
        await self.runner.stop()
