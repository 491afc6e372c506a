"""The sshd-log source ("auth_log"): the sshd log (a file, followed across rotation, or the
journal), its findings fed to the pipeline; the read position and the login history persist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from alpha.auth import (
    AuthDetector,
    FileFollower,
    FollowError,
    JournalFollower,
    load_history,
    save_history,
)
from alpha.auth import finding_to_event as auth_event
from alpha.config import AuthSection
from alpha.pipeline import Pipeline
from alpha.sources.common import Periodic, log
from crypto.files import make_private_dirs
from mesh.guardian.sensors import LossStage, SensorHandle, SensorRegistry
from mesh.logs import log_event


class AuthSource:
    """Follows the sshd log and feeds its findings (failures with window counts, logins from
    new addresses) to the pipeline; the position and the login history persist."""

    def __init__(
        self,
        config: AuthSection,
        pipeline: Pipeline,
        registry: SensorRegistry,
        *,
        name: str = "auth_log",
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._registry = registry
        self._name = name
        self.handle: SensorHandle | None = None
        self.detector: AuthDetector | None = None
        self._follower: FileFollower | JournalFollower | None = None
        self._periodic: Periodic | None = None
        self._history_path = config.state_directory / "auth.history.json"
        self._dropped = 0

    @property
    def name(self) -> str:
        return self._name

    def source(self) -> str:
        cfg = self.config
        if cfg.source != "auto":
            return cfg.source
        return "file" if cfg.log_path.exists() else "journal"

    async def start(self) -> None:
        cfg = self.config
        source = self.source()
        self.handle = self._registry.register(self._name, mode=source)
        try:
            make_private_dirs(cfg.state_directory)
            history = load_history(
                self._history_path, cfg.history_max_users, cfg.history_addresses_per_user
            )
        except (OSError, ValueError) as exc:
            # Without its history every login would look new: say so, and go on without it.
            self.handle.degraded(f"login history unavailable: {exc}")
            history = None
        self.detector = AuthDetector(cfg, history=history)
        try:
            if source == "file":
                self._follower = FileFollower(
                    cfg.log_path,
                    cfg.state_directory / "auth.follow.json",
                    start_at_end=cfg.start_at_end,
                )
            else:
                journal = JournalFollower(
                    cfg.state_directory / "auth.journal.cursor", cfg.journal_units
                )
                journal.start()
                self._follower = journal
        except (FollowError, OSError) as exc:
            self.handle.failed(f"cannot follow the sshd log ({source}): {exc}")
            return
        self._periodic = Periodic(
            "qsc-alpha-auth", cfg.poll_interval.total_seconds(), self.poll_once
        )
        self._periodic.start()

    def poll_once(self) -> None:
        follower, detector, handle = self._follower, self.detector, self.handle
        if follower is None or detector is None or handle is None:
            return
        try:
            lines = follower.poll()
        except (FollowError, OSError) as exc:
            handle.degraded(f"reading the sshd log failed: {exc}")
            return
        if isinstance(follower, FileFollower) and not follower.path.exists():
            handle.degraded(f"{follower.path} does not exist (yet); waiting for it")
        elif isinstance(follower, JournalFollower) and not follower.running:
            handle.failed("journalctl exited")
        else:
            handle.healthy()
        if isinstance(follower, JournalFollower) and follower.dropped > self._dropped:
            handle.count_loss(LossStage.USER_QUEUE, follower.dropped - self._dropped)
            self._dropped = follower.dropped
        if not lines:
            return
        events = [auth_event(f) for f in detector.observe_lines(lines)]
        if events:
            handle.count_event(len(events))
            self.pipeline.handle_findings(events)
        # Only once the events are in the outbox: a crash before re-reads, never skips.
        follower.checkpoint()
        if detector.history.changed:
            with contextlib.suppress(OSError):
                save_history(self._history_path, detector.history)

    async def stop(self) -> None:
        if self._periodic is not None:
            await asyncio.to_thread(self._periodic.stop)
        follower = self._follower
        if isinstance(follower, JournalFollower):
            await asyncio.to_thread(follower.stop)
        elif follower is not None:
            follower.close()
        if self.detector is not None and self.detector.history.changed:
            try:
                save_history(self._history_path, self.detector.history)
            except OSError as exc:
                log_event(log, "login history not saved", level=logging.WARNING, error=str(exc))
