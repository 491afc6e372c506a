"""A typed client for the guardians' on-demand calls, for the Cortex's playbooks.

    config = GuardianClientConfig(ChannelConfig(target="beta-1:7443", tls=tls))
    async with GuardianClient(config) as beta:
        summary = await beta.scan_integrity(bpb.ScanIntegrityRequest(), on_progress=print)
        await beta.approve_heal("p-1", comment="reviewed")

The frame is `mesh.calls.MeshClient`, as for `ml.client`: one `mesh.channel` channel (mTLS,
retries of UNAVAILABLE), one deadline per call that its retries and the channel's transport
check spend, and a failed call raises from the guardian section of `cortex.errors`: argument,
not found, precondition, busy (RESOURCE_EXHAUSTED: retry later), unavailable (also a missed
deadline), denied; never a raw `grpc.RpcError`. A `timeout=` of zero or less is a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

import grpc

from cortex.errors import (
    GuardianArgumentError,
    GuardianBusyError,
    GuardianCallError,
    GuardianDeniedError,
    GuardianNotFoundCallError,
    GuardianPreconditionError,
    GuardianUnavailableError,
)
from mesh.calls import DENIED_CODES, UNAVAILABLE_CODES, MeshClient, require_positive
from mesh.channel import ChannelConfig
from qsc.alpha.v1 import alpha_service_pb2 as apb
from qsc.alpha.v1 import alpha_service_pb2_grpc as apb_grpc
from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.beta.v1 import beta_service_pb2_grpc as bpb_grpc

if TYPE_CHECKING:
    from qsc.alpha.v1.alpha_service_pb2_grpc import AlphaServiceAsyncStub
    from qsc.beta.v1.beta_service_pb2_grpc import BetaServiceAsyncStub


@dataclass(frozen=True)
class GuardianClientConfig:
    """Where the guardian is and how long each call may take (retries included)."""

    channel: ChannelConfig
    scan_memory_timeout: timedelta = timedelta(seconds=30)
    scan_integrity_timeout: timedelta = timedelta(minutes=10)
    verify_backup_timeout: timedelta = timedelta(minutes=10)
    heal_timeout: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        require_positive(
            self,
            "scan_memory_timeout",
            "scan_integrity_timeout",
            "verify_backup_timeout",
            "heal_timeout",
        )


class _Stubs(NamedTuple):
    alpha: AlphaServiceAsyncStub
    beta: BetaServiceAsyncStub


class GuardianClient(MeshClient[_Stubs]):
    """AlphaService and BetaService calls over one channel; an async context manager."""

    def __init__(self, config: GuardianClientConfig) -> None:
        super().__init__(config.channel, call_error)
        self.config = config

    def _bind(self, channel: grpc.aio.Channel) -> _Stubs:
        return _Stubs(
            apb_grpc.AlphaServiceStub(channel),
            bpb_grpc.BetaServiceStub(channel),
        )

    # --- Alpha ------------------------------------------------------------------------------

    async def scan_memory(
        self,
        pids: tuple[int, ...] = (),
        *,
        include_allowlisted: bool = False,
        skip_events: bool = False,
        timeout: timedelta | None = None,
    ) -> apb.ScanMemoryResponse:
        request = apb.ScanMemoryRequest(
            pids=list(pids), include_allowlisted=include_allowlisted, skip_events=skip_events
        )
        return await self._unary(
            self.stubs.alpha.ScanMemory, request, _given(timeout, self.config.scan_memory_timeout)
        )

    # --- Beta -------------------------------------------------------------------------------

    async def scan_integrity(
        self,
        request: bpb.ScanIntegrityRequest | None = None,
        *,
        on_progress: Callable[[bpb.ScanIntegrityResponse], None] | None = None,
        timeout: timedelta | None = None,
    ) -> bpb.ScanSummary:
        """Run a scan; every progress or change message goes to `on_progress`, the final
        summary is returned."""
        messages = self._stream(
            self.stubs.beta.ScanIntegrity,
            request or bpb.ScanIntegrityRequest(),
            _given(timeout, self.config.scan_integrity_timeout),
        )
        async for message in messages:
            if message.HasField("summary"):
                summary: bpb.ScanSummary = message.summary
                return summary
            if on_progress is not None:
                on_progress(message)
        raise GuardianCallError("INTERNAL", "the scan stream ended without a summary")

    async def verify_backup(
        self, backup_set: str, *, whole_set: bool = False, timeout: timedelta | None = None
    ) -> bpb.VerifyBackupResponse:
        request = bpb.VerifyBackupRequest(backup_set=backup_set, whole_set=whole_set)
        return await self._unary(
            self.stubs.beta.VerifyBackup,
            request,
            _given(timeout, self.config.verify_backup_timeout),
        )

    async def approve_heal(
        self,
        proposal_id: str,
        *,
        comment: str = "",
        expected_current_blake3: bytes = b"",
        timeout: timedelta | None = None,
    ) -> bpb.HealProposal:
        request = bpb.ApproveHealRequest(
            proposal_id=proposal_id,
            comment=comment,
            expected_current_blake3=expected_current_blake3,
        )
        response = await self._unary(
            self.stubs.beta.ApproveHeal, request, _given(timeout, self.config.heal_timeout)
        )
        return response.proposal

    async def reject_heal(
        self, proposal_id: str, *, comment: str = "", timeout: timedelta | None = None
    ) -> bpb.HealProposal:
        request = bpb.RejectHealRequest(proposal_id=proposal_id, comment=comment)
        response = await self._unary(
            self.stubs.beta.RejectHeal, request, _given(timeout, self.config.heal_timeout)
        )
        return response.proposal


def _given(timeout: timedelta | None, default: timedelta) -> timedelta:
    """A call's own timeout, else the config's; zero or negative is a caller's bug, not "use
    the default"."""
    if timeout is None:
        return default
    if timeout <= timedelta(0):
        raise ValueError("timeout must be positive")
    return timeout


def call_error(code: grpc.StatusCode, details: str) -> GuardianCallError:
    """The cortex.errors exception for a failed guardian call's status."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return GuardianArgumentError(code.name, details)
    if code == grpc.StatusCode.NOT_FOUND:
        return GuardianNotFoundCallError(code.name, details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return GuardianPreconditionError(code.name, details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return GuardianBusyError(code.name, details)
    if code in UNAVAILABLE_CODES:
        return GuardianUnavailableError(code.name, details)
    if code in DENIED_CODES:
        return GuardianDeniedError(code.name, details)
    return GuardianCallError(code.name, details)
