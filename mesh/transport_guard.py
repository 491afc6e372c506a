"""The client half of the post-quantum rule: never send a request over a classical handshake.

A server can refuse a classical call only after the client has sent it: grpcio cannot restrict
the key-exchange groups a handshake may use, and the request body travels with the call. And a
Python gRPC client cannot read its own connection's TLS state. So a mesh channel asks first:
before its first call, and again after every time its connection was not READY, it makes one
Health/Check (nothing secret in it) and reads what the server says the handshake negotiated
(`qsc-kex-group`, `qsc-tls-version`, sent by `mesh.interceptors` on every answer, refusals
included). When this identity's role requires a hybrid group (`mesh.policy`) and the answer is
classical or missing, the call fails with UNAUTHENTICATED before a byte of it is sent. Roles
that `prefer` (operator, soar) skip the check: classical is allowed for them, and counted by
the server.

Residual risk (the README's guarantees): the check is per connection, not per call. grpc may
replace a connection between the check and a call (the watcher below notices within one event
loop turn, not atomically), and a TLS-terminating proxy in front of the server is judged by the
proxy-to-server leg. End-to-end confidentiality of event batches does not rest on this check:
sealed Subscribe sessions carry their own ML-KEM-1024 exchange (`mesh.stream.sealing`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any, Final

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from mesh.interceptors import KEX_GROUP_HEADER, TLS_VERSION_HEADER
from mesh.logs import log_event
from mesh.policy import TLS_1_3, PqMode, PqPolicy

_log = logging.getLogger("qsc.mesh.transport")

HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
_in_preflight: contextvars.ContextVar[bool] = contextvars.ContextVar("_in_preflight", default=False)


def _header(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
    return None


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def _refusal(details: str) -> grpc.aio.AioRpcError:
    return _error(grpc.StatusCode.UNAUTHENTICATED, details)


class TransportGuard:
    """One channel's check state; `interceptors()` go outermost on the channel."""

    def __init__(self, role: str, mode: PqMode, policy: PqPolicy | None = None) -> None:
        self.role = role
        self.mode = mode
        self.policy = policy or PqPolicy()
        self.channel: grpc.aio.Channel | None = None
        self.group: str | None = None  # what the last check saw
        self.checks = 0
        self._verified = False
        self._lock: asyncio.Lock | None = None
        self._watcher: asyncio.Task[None] | None = None

    def attach(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    def interceptors(self) -> list[Any]:
        return [cls(self) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]

    @property
    def settled(self) -> bool:
        """No check is needed before the next call."""
        return self._verified or self.mode is not PqMode.REQUIRE or _in_preflight.get()

    async def ensure(self, timeout: float | None = None) -> None:
        """Return once this channel's connection is known to be acceptable; else raise the
        AioRpcError the call ends with (the check's own error when the server cannot be
        reached, so callers see UNAVAILABLE as they would have). `timeout` is the call's own
        deadline: the check spends it, so a server that never finishes its handshake costs the
        caller no more than the deadline it chose."""
        if self.settled:
            return  # prefer: classical is allowed, and the server counts it
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            async with asyncio.timeout(timeout), self._lock:
                if not self._verified:
                    await self._check(timeout)
        except TimeoutError:
            raise _error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded while checking the connection's key exchange",
            ) from None

    async def _check(self, timeout: float | None) -> None:
        channel = self.channel
        if channel is None:
            raise RuntimeError("TransportGuard used before attach()")
        token = _in_preflight.set(True)
        try:
            self.checks += 1
            call = channel.unary_unary(
                HEALTH_CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )(health_pb2.HealthCheckRequest(), timeout=timeout)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                trailing = exc.trailing_metadata()
                self._judge(
                    _header(trailing, KEX_GROUP_HEADER), _header(trailing, TLS_VERSION_HEADER)
                )
                raise  # accepted transport, refused for another reason: the caller sees why
            answer = await call.trailing_metadata()
            self._judge(_header(answer, KEX_GROUP_HEADER), _header(answer, TLS_VERSION_HEADER))
            self._verified = True
            self._watch(channel)
        finally:
            _in_preflight.reset(token)

    def _judge(self, group: str | None, tls_version: str | None) -> None:
        self.group = group
        if group is None or tls_version is None:
            raise _refusal(
                "the server does not say what its handshake negotiated (not a mesh server, or "
                f"a proxy that drops trailing metadata): role {self.role} requires a hybrid "
                "post-quantum group, so nothing was sent"
            )
        if tls_version != TLS_1_3 or not self.policy.is_hybrid(group):
            log_event(
                _log,
                "refusing to send on a classical connection",
                level=logging.WARNING,
                role=self.role,
                kex_group=group,
                tls_version=tls_version,
            )
            raise _refusal(
                f"this connection negotiated {tls_version} with key exchange {group}: role "
                f"{self.role} requires TLS 1.3 with a hybrid post-quantum group, so nothing "
                "was sent"
            )

    def _watch(self, channel: grpc.aio.Channel) -> None:
        """Forget the verdict as soon as the connection is not READY: the next one is new."""
        if self._watcher is not None and not self._watcher.done():
            return

        async def watch() -> None:
            state = channel.get_state()
            while state == grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(state)
                state = channel.get_state()
            self._verified = False

        self._watcher = asyncio.get_running_loop().create_task(watch())
        self._watcher.add_done_callback(_quiet)


def _quiet(task: asyncio.Task[None]) -> None:
    # A channel closed under the watcher ends it with an error nobody needs to see.
    if not task.cancelled():
        task.exception()


class _Guard:
    def __init__(self, guard: TransportGuard) -> None:
        self._guard = guard

    async def _go(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout
        if timeout is None or self._guard.settled:
            await self._guard.ensure(timeout)
            return await continuation(details, request)
        started = time.monotonic()
        await self._guard.ensure(timeout)
        # The call gets what the check left of its deadline: one deadline for both.
        left = max(timeout - (time.monotonic() - started), 0.001)
        return await continuation(
            grpc.aio.ClientCallDetails(
                details.method, left, details.metadata, details.credentials, details.wait_for_ready
            ),
            request,
        )


# grpc.aio files an interceptor object under the first arity it implements: one class each.
class _UnaryUnary(_Guard, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._go(continuation, details, request)


class _UnaryStream(_Guard, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._go(continuation, details, request)


class _StreamUnary(_Guard, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._go(continuation, details, requests)


class _StreamStream(_Guard, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._go(continuation, details, requests)
