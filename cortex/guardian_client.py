"""A typed client for the guardians' on-demand calls, for the Cortex's playbooks.

    config = GuardianClientConfig(ChannelConfig(target="beta-1:7443", tls=tls))
    async with GuardianClient(config) as beta:
        summary = await beta.scan_integrity(bpb.ScanIntegrityRequest(), on_progress=print)
        await beta.approve_heal("p-1", comment="reviewed")

Modelled on `ml.client`: the channel is `mesh.channel.open_channel` (mTLS, retries of
UNAVAILABLE), every call has one deadline that its retries spend, and a failed call raises from
the guardian section of `cortex.errors`, never a raw `grpc.RpcError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import grpc

from cortex.errors import (
    GuardianArgumentError,
    GuardianCallError,
    GuardianDeniedError,
    GuardianNotFoundCallError,
    GuardianPreconditionError,
    GuardianUnavailableError,
)
from mesh.channel import ChannelConfig, open_channel
from mesh.errors import ConfigError
from qsc.alpha.v1 import alpha_service_pb2 as apb
from qsc.alpha.v1 import alpha_service_pb2_grpc as apb_grpc
from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.beta.v1 import beta_service_pb2_grpc as bpb_grpc

if TYPE_CHECKING:
    from qsc.alpha.v1.alpha_service_pb2_grpc import AlphaServiceAsyncStub
    from qsc.beta.v1.beta_service_pb2_grpc import BetaServiceAsyncStub

Request = TypeVar("Request")
Response = TypeVar("Response")

_UNAVAILABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_DENIED: Final = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


@dataclass(frozen=True)
class GuardianClientConfig:
    """Where the guardian is and how long each call may take (retries included)."""

    channel: ChannelConfig
    scan_memory_timeout: timedelta = timedelta(seconds=30)
    scan_integrity_timeout: timedelta = timedelta(minutes=10)
    verify_backup_timeout: timedelta = timedelta(minutes=10)
    heal_timeout: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        for key in (
            "scan_memory_timeout",
            "scan_integrity_timeout",
            "verify_backup_timeout",
            "heal_timeout",
        ):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(key, "must be positive")


class GuardianClient:
    """AlphaService and BetaService calls over one channel; an async context manager."""

    def __init__(self, config: GuardianClientConfig) -> None:
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._alpha: AlphaServiceAsyncStub | None = None
        self._beta: BetaServiceAsyncStub | None = None

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def open(self) -> None:
        """Open the channel (once; bad identity files raise IdentityError now)."""
        if self._channel is None:
            self._channel = open_channel(self.config.channel)
            self._alpha = apb_grpc.AlphaServiceStub(self._channel)
            self._beta = bpb_grpc.BetaServiceStub(self._channel)

    async def close(self) -> None:
        channel, self._channel, self._alpha, self._beta = self._channel, None, None, None
        if channel is not None:
            await channel.close(None)

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
        return await _call(
            self._stubs()[0].ScanMemory,
            request,
            timeout or self.config.scan_memory_timeout,
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
        seconds = (timeout or self.config.scan_integrity_timeout).total_seconds()
        stream: Any = self._stubs()[1].ScanIntegrity(
            request or bpb.ScanIntegrityRequest(), timeout=seconds
        )
        try:
            async for message in stream:
                if message.HasField("summary"):
                    summary: bpb.ScanSummary = message.summary
                    return summary
                if on_progress is not None:
                    on_progress(message)
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc.code(), exc.details() or "") from None
        raise GuardianCallError("INTERNAL", "the scan stream ended without a summary")

    async def verify_backup(
        self, backup_set: str, *, whole_set: bool = False, timeout: timedelta | None = None
    ) -> bpb.VerifyBackupResponse:
        request = bpb.VerifyBackupRequest(backup_set=backup_set, whole_set=whole_set)
        return await _call(
            self._stubs()[1].VerifyBackup, request, timeout or self.config.verify_backup_timeout
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
        response = await _call(
            self._stubs()[1].ApproveHeal, request, timeout or self.config.heal_timeout
        )
        return response.proposal

    async def reject_heal(
        self, proposal_id: str, *, comment: str = "", timeout: timedelta | None = None
    ) -> bpb.HealProposal:
        request = bpb.RejectHealRequest(proposal_id=proposal_id, comment=comment)
        response = await _call(
            self._stubs()[1].RejectHeal, request, timeout or self.config.heal_timeout
        )
        return response.proposal

    def _stubs(self) -> tuple[AlphaServiceAsyncStub, BetaServiceAsyncStub]:
        if self._alpha is None or self._beta is None:
            raise RuntimeError("the client is not open: use `async with GuardianClient(...)`")
        return self._alpha, self._beta


async def _call(
    method: Callable[..., Awaitable[Response]], request: Request, timeout: timedelta
) -> Response:
    try:
        return await method(request, timeout=timeout.total_seconds())
    except grpc.aio.AioRpcError as exc:
        raise call_error(exc.code(), exc.details() or "") from None


def call_error(code: grpc.StatusCode, details: str) -> GuardianCallError:
    """The cortex.errors exception for a failed guardian call's status."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return GuardianArgumentError(code.name, details)
    if code == grpc.StatusCode.NOT_FOUND:
        return GuardianNotFoundCallError(code.name, details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return GuardianPreconditionError(code.name, details)
    if code in _UNAVAILABLE:
        return GuardianUnavailableError(code.name, details)
    if code in _DENIED:
        return GuardianDeniedError(code.name, details)
    return GuardianCallError(code.name, details)
