"""Guardian-Beta assembled: the guardian runtime, the keyring, FIM, backups, certificates, heal.

    beta = Beta(config)            # keyring opened, outbox opened, services and workers added
    port = await beta.start()      # serving, workers started (mesh.service wires the signals)
    await beta.stop()              # drain, stop the workers, close the outbox

Workers start after the server listens, in this order: FIM (its supervisor thread loads and
verifies the baseline), healing (vault sync once FIM runs, then FIM changes on healable paths),
certificate checks, backup verifications; they stop in reverse, so the healer is gone before
the FIM monitor it announces its writes to. The objects behind BetaService (`fim`, `heal`,
`backups`, `certs`) are the same ones the workers use, so an on-demand call and a scheduled run
never race on state.
"""

from __future__ import annotations

from beta.config import BetaConfig
from beta.server import BetaServicer
from beta.sources.fim import FimSource
from beta.sources.heal import HealSource, with_heal_exclude
from beta.sources.scheduled import BackupVerifier, CertWatcher
from crypto.errors import KeyringError
from crypto.keyring import KeyManager
from mesh.errors import ConfigError
from mesh.guardian import Guardian
from mesh.metrics import EventCounts, MetricsExporter, guardian_collectors


def open_keys(config: BetaConfig) -> KeyManager:
    """The Beta keyring; ConfigError (a usage problem) when it is absent and not to be made."""
    directory = config.keys.directory
    if not config.keys.create and not (directory / "keyring.json").exists():
        raise ConfigError(
            "keys.directory",
            f"no keyring in {directory}; create it with `qsc keys init --dir {directory} "
            "--component beta` (or set [keys] create = true)",
        )
    keys = KeyManager.open(directory, "beta", create=config.keys.create)
    if keys.component != "beta":
        raise KeyringError(f"the keyring in {directory} is {keys.component!r}'s, not Beta's")
    return keys


class Beta:
    def __init__(self, config: BetaConfig) -> None:
        self.config = config
        # The keyring first: without it no baseline or manifest can be trusted.
        self.keys = open_keys(config)
        self.guardian = Guardian(config.guardian_config())
        # Prometheus ([metrics]): events counted where the sources hand them to the outbox.
        self.event_counts = EventCounts()
        self.metrics = MetricsExporter(config.metrics, component="beta")
        try:
            registry = self.guardian.sensors
            emit_many = self.event_counts.wrap(self.guardian.emit_many)
            state = config.state.directory
            self.fim = FimSource(
                with_heal_exclude(config.fim),
                self.keys,
                state,
                emit_many,
                registry,
                on_tamper=lambda change, event: self.heal.on_tamper(change, event),
            )
            self.heal = HealSource(config, self.keys, self.fim, emit_many, registry)
            self.certs = CertWatcher(config.certs, emit_many, registry)
            self.backups = BackupVerifier(config.backups, self.keys, state, emit_many, registry)
            servicer = BetaServicer(
                fim=self.fim, heal=self.heal, backups=self.backups, certs=self.certs
            )
            self.guardian.add_service(servicer.binding())
            self.guardian.add_worker(self.fim)
            self.guardian.add_worker(self.heal)
            self.guardian.add_worker(self.certs)
            self.guardian.add_worker(self.backups)
        except BaseException:
            self.guardian.outbox.close()
            raise

    async def start(self) -> int:
        """Metrics (when configured), serve, then start the workers in the order above; return
        the bound port."""
        self.metrics.start(guardian_collectors(self.guardian, self.event_counts))
        return await self.guardian.start()

    async def stop(self) -> None:
        """Drain, stop the workers in reverse, close the outbox. Idempotent."""
        try:
            await self.guardian.stop()
        finally:
            self.metrics.stop()
