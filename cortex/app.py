"""The Cortex assembled: event store, ingest of every guardian, correlation, playbooks, the
mesh server.

    cortex = Cortex(config, config_path=path)   # identity checked, store opened (or created)
    port = await cortex.start()                  # following the guardians; serving
    cortex.reload()                              # SIGHUP: re-read the guardian list
    await cortex.stop()                          # drain the server, stop ingest, close the store

`qsc-cortex run` runs it in mesh.service, which wires SIGTERM/SIGINT to `stop` and SIGHUP to
`reload`. The store is opened in the constructor, so a wrong key, another Cortex's database or a
corrupted file refuses the start before anything listens (`StoreOpenError` names the file).
Checkpoints are signed with the TLS identity's key (`cortex.store.checkpoint`).

The read API is `cortex.service.CortexServicer` over the store and the ingest's guardian
tracker; its page tokens are keyed from the store (`SqliteEventStore.token_key`), so a client
paging through a restart carries on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from cortex import _convert, assessment_records
from cortex.anomaly import AnomalyScorer
from cortex.anomaly_client import AnomalyScoreClient
from cortex.assessment_stream import AssessmentLog
from cortex.assessments import Assessment
from cortex.config import COMPONENT, CortexConfig, GuardianSection, load_cortex_config
from cortex.correlation import CorrelationRuntime
from cortex.guardian_view import GuardianDirectory
from cortex.ingest import Ingest, OwnIdentity
from cortex.metrics import CortexCollector, IngestCounts
from cortex.playbooks.runtime import PlaybookRuntime
from cortex.record_filter import RecordFilter
from cortex.service import SERVICE, CortexServicer
from cortex.store import CheckpointSigner, SqliteEventStore
from mesh.channel import ChannelConfig, open_channel
from mesh.errors import MeshError
from mesh.identity import load_tls_of_role
from mesh.logs import log_event
from mesh.metrics import MetricsExporter, TransportCollector
from mesh.server import ComponentServer
from mesh.stream.subscriber import Dialer
from qsc.common.v1 import event_pb2

__all__ = ["SERVICE_NAME", "Cortex", "open_store"]

_log = logging.getLogger(__name__)

SERVICE_NAME = SERVICE


def open_store(config: CortexConfig, signer: CheckpointSigner) -> SqliteEventStore:
    """The writer's store: created in an empty directory, refused over anything else."""
    return SqliteEventStore.open_with_keyring(
        config.store.store_config(),
        config.keyring.directory,
        component=COMPONENT,
        signer=signer,
        create=True,
    )


class Cortex:
    """The `qsc-cortex run` service (`mesh.service.Service`)."""

    def __init__(
        self,
        config: CortexConfig,
        *,
        config_path: Path | None = None,
        dial: Dialer = open_channel,
    ) -> None:
        self.config = config
        self.config_path = config_path
        material = load_tls_of_role(config.server.tls, COMPONENT)
        self.identity = material.identity
        self.store = open_store(config, CheckpointSigner.from_tls(material))
        self.counts = IngestCounts()  # Prometheus ([metrics]): what nothing else counts
        self.metrics = MetricsExporter(config.metrics, component=COMPONENT)
        try:
            self.correlation = (
                CorrelationRuntime(config.correlation) if config.correlation.enabled else None
            )
            own = OwnIdentity.of(material.identity)
            self.changes = (
                None if self.correlation is None else self._change_log(self.correlation, own)
            )
            self.ingest = Ingest(
                self.store,
                config.guardians,
                config.ingest,
                tls=config.server.tls,
                own=own,
                dial=dial,
                on_stored=self._stored,
                on_recorded=None if self.changes is None else self.changes.recorded,
            )
            self.ml_client: AnomalyScoreClient | None = None
            self.scorer: AnomalyScorer | None = None
            if config.ml.enabled:
                self.ml_client = AnomalyScoreClient(
                    ChannelConfig(
                        target=config.ml.address,
                        tls=config.server.tls,
                        server_name_override=config.ml.server_name,
                    ),
                    config.ml.score_timeout,
                )
                self.scorer = AnomalyScorer(
                    config.ml, self.ml_client, record=self.ingest.record, stamp=self.ingest.stamp
                )
            self.playbooks: PlaybookRuntime | None = None
            if config.playbooks.enabled and self.correlation is not None:
                # Secrets and playbook files are checked now: a bad one refuses the start.
                self.playbooks = PlaybookRuntime(config, self.store)
            elif config.playbooks.files:
                log_event(
                    _log,
                    "playbooks are configured but will not run: they are triggered by "
                    "assessments, and [correlation] or [playbooks] is switched off",
                    level=logging.WARNING,
                )
            self.server = ComponentServer(config.server, component=COMPONENT)
            self.servicer = CortexServicer(
                self.store,
                self.ingest.tracker,
                token_key=self.store.token_key(),
                correlation=self.correlation,
                changes=self.changes,
                scoring=None if self.scorer is None else self.scorer.status,
                runs=self.store.runs,
                playbooks=self.playbooks,
            )
            self.server.add_service(self.servicer.binding())
        except BaseException:
            self.store.close()
            raise
        self._stopped = False
        self._rules_reload: asyncio.Task[None] | None = None
        self._playbooks_reload: asyncio.Task[None] | None = None

    async def _stored(self, events: Sequence[event_pb2.Event]) -> None:
        """Every stored batch: host windows to the scorer, everything to correlation."""
        self.counts.stored(events)
        if self.scorer is not None:
            self.scorer.observe(events)
        if self.correlation is not None:
            await self.correlation.observe(events)

    def _change_log(self, runtime: CorrelationRuntime, own: OwnIdentity) -> AssessmentLog:
        """SubscribeAssessments' log: the stored assessment changes, snapshots from the book."""
        store = self.store

        async def snapshot(flt: RecordFilter[Assessment]) -> list[Assessment]:
            return await runtime.call(lambda: [a for a in runtime.book.all() if flt.matches(a)])

        return AssessmentLog(
            store,
            own.guardian_id,
            store.token_key(),
            snapshot=snapshot,
            convert=lambda a: _convert.assessment(a, store.get),
        )

    @property
    def directory(self) -> GuardianDirectory:
        return self.ingest.tracker

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> int:
        self.metrics.start([CortexCollector(self, self.counts), TransportCollector(self.server)])
        if self.playbooks is not None:
            # First: runs left due by a crash go out now, and what the restore below raises
            # again is suppressed against the runs already stored.
            await self.playbooks.start()
        if self.correlation is not None:
            # Assessments and open windows back from the store before any new event arrives.
            await self.ingest.prepare()
            self.correlation.persist_with(self._store_assessments)
            await self.correlation.restore(self.store)
            await self.correlation.start()
        if self.changes is not None:
            self.changes.start(self.ingest.own_seq)
        if self.scorer is not None and self.ml_client is not None:
            self.ml_client.open()
            await self.scorer.start()
        await self.ingest.start()
        return await self.server.start()

    async def _store_assessments(self, changes: Sequence[Assessment]) -> None:
        """Each change as one of the Cortex's records, with the playbook runs it triggers in
        the same transaction (the delivery outbox: a crash keeps both or neither)."""
        events = [self.ingest.stamp(assessment_records.to_event(a)) for a in changes]
        playbooks = self.playbooks
        if playbooks is None:
            await self.ingest.record(events)
            self.counts.changed(changes)
            return
        pairs = [(a, e.id) for a, e in zip(changes, events, strict=True)]
        await self.ingest.record(events, runs=lambda: playbooks.plan(pairs))
        self.counts.changed(changes)
        playbooks.wake()

    async def stop(self) -> None:
        """Drain the API, stop ingest, close the store (a last signed checkpoint). Idempotent,
        and safe after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await self.server.stop()
        finally:
            try:
                if self.playbooks is not None:
                    await self.playbooks.stop()
                if self.scorer is not None:
                    await self.scorer.stop()
                await self.ingest.stop()
                if self.correlation is not None:
                    await self.correlation.stop()
                if self.ml_client is not None:
                    await self.ml_client.close()
            finally:
                self.metrics.stop()
                await asyncio.to_thread(self.store.close)

    def reload(self) -> None:
        """Re-read the configuration file (SIGHUP): follow its guardian list and reload the
        correlation rule files and the playbook files. A file that does not load keeps the
        current list, a rule or playbook file that does not load keeps the current ones (all
        logged); other changed sections need a restart."""
        if self.config_path is None:
            log_event(_log, "reload ignored: no configuration file", level=logging.WARNING)
            return
        try:
            new = load_cortex_config(self.config_path)
            self.ingest.reload(new.guardians)
        except (MeshError, ValueError, OSError) as exc:
            log_event(
                _log,
                "reload refused; the guardian list is unchanged",
                level=logging.ERROR,
                error=str(exc),
            )
            return
        if self.correlation is not None:
            rules = new.correlation.rules
            self._rules_reload = asyncio.get_running_loop().create_task(self._reload_rules(rules))
        if self.playbooks is not None:
            self._playbooks_reload = asyncio.get_running_loop().create_task(
                self._reload_playbooks(new.playbooks.files, new.guardians)
            )
        kept = dataclasses.replace(
            new,
            guardians=self.config.guardians,
            correlation=dataclasses.replace(new.correlation, rules=self.config.correlation.rules),
            playbooks=dataclasses.replace(new.playbooks, files=self.config.playbooks.files),
        )
        if kept != self.config:
            log_event(
                _log,
                "only [[guardians]], [correlation] rules and [playbooks] files are reloaded; "
                "restart for the other changes",
                level=logging.WARNING,
            )
        self.config = dataclasses.replace(
            self.config,
            guardians=new.guardians,
            correlation=dataclasses.replace(self.config.correlation, rules=new.correlation.rules),
            playbooks=dataclasses.replace(self.config.playbooks, files=new.playbooks.files),
        )

    async def _reload_playbooks(
        self, files: tuple[Path, ...], guardians: tuple[GuardianSection, ...]
    ) -> None:
        assert self.playbooks is not None
        try:
            await self.playbooks.reload(files, guardians)
        except (MeshError, OSError) as exc:  # PlaybookDefinitionError names FILE:LINE
            log_event(
                _log,
                "playbooks refused; the current playbooks stay",
                level=logging.ERROR,
                error=str(exc),
            )
            return
        log_event(_log, "playbooks reloaded", playbooks=len(self.playbooks.playbooks.playbooks))

    async def _reload_rules(self, rules: tuple[Path, ...]) -> None:
        assert self.correlation is not None
        try:
            await self.correlation.reload(rules)
        except (MeshError, OSError) as exc:  # CorrelationRuleError names FILE:LINE
            log_event(
                _log,
                "correlation rules refused; the current rules stay",
                level=logging.ERROR,
                error=str(exc),
            )
            return
        log_event(
            _log,
            "correlation rules reloaded",
            rules=len(self.correlation.ruleset.rules),
            version=self.correlation.ruleset.version,
        )
