"""Guardian steps: a playbook asks a guardian to act, through `cortex.guardian_client`.

    actions = GuardianActions(config.guardians, tls=config.server.tls, timeout=...)
    message = await actions.run("beta-web-01", spec, events)   # the outcome in words
    await actions.close()

One client (one mTLS channel, the Cortex's own identity) per guardian, opened at first use.
What each action asks: `verify_backup` the named set; `scan_integrity` the listed paths (or
all); `approve_heal` every heal proposal the assessment's events from that guardian name that
is still pending; `scan_memory` the processes the assessment's events from that guardian's
host name. The step succeeds when the guardian did what was asked; what it found (a backup that
failed verification, findings) is the step's message and, as the guardian's own events, reaches
the store like everything it reports. A guardian unavailable or busy is retried like a
webhook; a refusal (not found, bad argument, denied) fails the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from cortex.config import GuardianSection
from cortex.errors import GuardianBusyError, GuardianCallError, GuardianUnavailableError
from cortex.guardian_client import GuardianClient, GuardianClientConfig
from mesh.channel import ChannelConfig
from mesh.identity import TlsFiles
from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.common.v1 import event_pb2, heal_details_pb2

__all__ = ["ActionRetryError", "GuardianActions"]


class ActionRetryError(Exception):
    """The guardian could not take the action now: try again on the retry schedule."""


class GuardianActions:
    def __init__(
        self, guardians: Sequence[GuardianSection], *, tls: TlsFiles, timeout: timedelta
    ) -> None:
        self._guardians = {g.id: g for g in guardians}
        self._tls = tls
        self._timeout = timeout
        self._clients: dict[str, GuardianClient] = {}
        self._stale: list[GuardianClient] = []  # replaced by a reload, closed at the end

    def configure(self, guardians: Sequence[GuardianSection]) -> None:
        """A reloaded guardian list (clients of changed entries are reopened at next use)."""
        new = {g.id: g for g in guardians}
        for gid in [g for g in self._clients if self._guardians.get(g) != new.get(g)]:
            self._stale.append(self._clients.pop(gid))
        self._guardians = new

    def _client(self, guardian_id: str) -> GuardianClient:
        client = self._clients.get(guardian_id)
        if client is None:
            g = self._guardians.get(guardian_id)
            if g is None:
                raise GuardianCallError(
                    "NOT_FOUND", f"guardian {guardian_id} is no longer in [[guardians]]"
                )
            t = self._timeout
            client = GuardianClient(
                GuardianClientConfig(
                    ChannelConfig(g.address, self._tls, server_name_override=g.server_name),
                    scan_memory_timeout=t,
                    scan_integrity_timeout=t,
                    verify_backup_timeout=t,
                    heal_timeout=t,
                )
            )
            client.open()
            self._clients[guardian_id] = client
        return client

    async def run(
        self,
        guardian_id: str,
        spec: dict[str, Any],
        events: Sequence[event_pb2.Event],
    ) -> str:
        """Take the action of `spec`; its outcome in words. ActionRetryError when the guardian is
        unavailable or busy, GuardianCallError when it refused."""
        try:
            return await self._run(guardian_id, spec, events)
        except (GuardianUnavailableError, GuardianBusyError) as exc:
            raise ActionRetryError(str(exc)) from None

    async def _run(
        self, guardian_id: str, spec: dict[str, Any], events: Sequence[event_pb2.Event]
    ) -> str:
        client = self._client(guardian_id)
        action = spec["action"]
        if action == "verify_backup":
            r = (await client.verify_backup(spec["backup_set"], whole_set=spec["whole_set"])).result
            verdict = "passed" if r.passed else f"FAILED ({r.failure_count} failure(s))"
            return (
                f"backup set {r.backup_set} {verdict}: {r.files_checked}/{r.files_expected} "
                f"files, {r.bytes_checked} bytes checked"
            )
        if action == "scan_integrity":
            s = await client.scan_integrity(bpb.ScanIntegrityRequest(paths=spec["paths"]))
            return (
                f"scanned {s.files_scanned} files: {s.content_changed} changed, {s.created} "
                f"created, {s.deleted} deleted, {s.metadata_changed} metadata changed, "
                f"{s.errors} errors" + (", BASELINE TAMPERED" if s.baseline_tampered else "")
            )
        if action == "approve_heal":
            proposals = _pending_proposals(guardian_id, events)
            if not proposals:
                return "no pending heal proposal in the assessment's events"
            done = []
            for pid in proposals:
                p = await client.approve_heal(pid, comment="approved by a Cortex playbook")
                done.append(f"{pid}: {heal_details_pb2.HealState.Name(p.state)}")
            return "approved " + ", ".join(done)
        if action == "scan_memory":
            g = self._guardians[guardian_id]
            pids = tuple(
                sorted(
                    {e.process.pid for e in events if e.guardian.host == g.host and e.process.pid}
                )
            )
            if not pids:
                return "no process of that host in the assessment's events"
            scan = await client.scan_memory(pids)
            return f"scanned {len(pids)} process(es): {len(scan.findings)} finding(s)"
        raise GuardianCallError("INVALID_ARGUMENT", f"unknown action {action!r}")

    async def close(self) -> None:
        for client in [*self._clients.values(), *self._stale]:
            await client.close()
        self._clients.clear()
        self._stale.clear()


def _pending_proposals(guardian_id: str, events: Sequence[event_pb2.Event]) -> list[str]:
    latest: dict[str, int] = {}
    for e in events:
        if e.guardian.id == guardian_id and e.WhichOneof("detail") == "heal_action":
            latest[e.heal_action.proposal_id] = e.heal_action.state
    return [pid for pid, state in latest.items() if state == heal_details_pb2.HEAL_STATE_PROPOSED]
