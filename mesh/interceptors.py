"""Per-call enforcement: identity -> transport policy -> authorization -> stream limit -> call.

Every call's answer carries what its handshake negotiated as trailing metadata (`qsc-kex-group`,
`qsc-tls-version`), refusals included: a Python gRPC client cannot read its own connection's
TLS state, so `mesh.channel` learns it from a first Health/Check before it sends anything else.
Health/Watch streams have their own per-peer limit, so monitoring never takes a Subscribe slot.
Access lines of failed calls are rate-limited per peer and status code (`mesh.ratelimit`): a peer
replaying a refused call as fast as it can writes a few lines a second, each saying how many it
stands for (`suppressed`); successful calls are always logged.

grpc.aio server interceptors never see the ServicerContext, so the checks cannot run in
`intercept_service` itself. Instead it returns a copy of the method handler whose behaviour is
wrapped: the wrapper reads `context.auth_context()`, enforces, binds the peer identity for
`mesh.identity.peer_identity`, runs the real behaviour, maps raised errors to status codes through
`mesh.status`, and writes one log line per call. For request streams the checks run before the
first message is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc
import grpc.aio

from crypto.pki import Identity
from mesh.authz import HEALTH_SERVICE, AuthzTable
from mesh.errors import PolicyViolationError, ResourceExhaustedError, UnimplementedError
from mesh.identity import bind_peer, identity_from_auth_context, unbind_peer
from mesh.logs import log_event
from mesh.metrics import observe_rpc
from mesh.policy import PolicyCounters, PqPolicy, Transport, enforce, transport_of
from mesh.ratelimit import KeyedBuckets
from mesh.status import to_status

ACCESS_LOGGER: Final = "qsc.mesh.access"
ERROR_LOGGER: Final = "qsc.mesh.errors"

_QUIET_CODES: Final = frozenset({grpc.StatusCode.OK, grpc.StatusCode.CANCELLED})

# Trailing metadata on every answer: what the call's handshake negotiated (see the docstring).
KEX_GROUP_HEADER: Final = "qsc-kex-group"
TLS_VERSION_HEADER: Final = "qsc-tls-version"
HEALTH_WATCH: Final = f"/{HEALTH_SERVICE}/Watch"
FAILED_LINES_PER_SECOND: Final = 5.0
FAILED_LINES_BURST: Final = 20

# grpc's handler types are loose (sync or async, generator or reader/writer): keep them opaque.
Behaviour = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime classes are not generic
    _Interceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler


class MeshInterceptor(_Interceptor):
    """Enforces the mesh rules on every call of a server; see the module docstring."""

    def __init__(
        self,
        *,
        trust_domain: str,
        policy: PqPolicy,
        authz: AuthzTable,
        counters: PolicyCounters,
        max_streams_per_peer: int,
        max_health_watches_per_peer: int = 4,
    ) -> None:
        self.trust_domain = trust_domain
        self.policy = policy
        self.authz = authz
        self.counters = counters
        self.max_streams_per_peer = max_streams_per_peer
        self.max_health_watches_per_peer = max_health_watches_per_peer
        # spiffe id -> open streaming calls, and open Health/Watch streams (event loop only)
        self._streams: dict[str, int] = {}
        self._watches: dict[str, int] = {}
        self._access = logging.getLogger(ACCESS_LOGGER)
        self._failed_lines = KeyedBuckets(FAILED_LINES_PER_SECOND, FAILED_LINES_BURST)
        self._errors = logging.getLogger(ERROR_LOGGER)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            # Still authenticate and authorize: an unknown RPC tells a stranger nothing, and an RPC
            # the table grants but nobody serves gets UNIMPLEMENTED after the checks.
            handler = _UNIMPLEMENTED
        return self._wrap(method, handler)

    def open_streams(self) -> dict[str, int]:
        return dict(self._streams)

    # --- the steps of one call ----------------------------------------------------------------

    def admit(self, call: _Call) -> None:
        """Authenticate and authorize `call`, taking a stream slot if it streams; or raise."""
        auth = call.context.auth_context()
        call.identity = identity_from_auth_context(auth, self.trust_domain)
        role = call.identity.role
        call.transport = transport_of(auth, self.policy)
        call.context.set_trailing_metadata(call.transport_metadata())
        try:
            enforce(call.transport, role, self.policy)
        except PolicyViolationError:
            self.counters.record(role, call.transport, call.peer_address, refused=True)
            raise
        self.counters.record(role, call.transport, call.peer_address, refused=False)
        self.authz.check(call.method, role)
        if call.streaming:
            key = call.identity.spiffe_id
            slots, limit, what = self._slots(call)
            if slots.get(key, 0) >= limit:
                raise ResourceExhaustedError(f"{key} already has {limit} concurrent {what} open")
            slots[key] = slots.get(key, 0) + 1
            call.holds_slot = True
        call.token = bind_peer(call.context, call.identity)

    def _slots(self, call: _Call) -> tuple[dict[str, int], int, str]:
        if call.method == HEALTH_WATCH:
            return self._watches, self.max_health_watches_per_peer, "health watches"
        return self._streams, self.max_streams_per_peer, "streams"

    async def fail(self, call: _Call, exc: Exception) -> NoReturn:
        """End `call` with the status `exc` maps to (a servicer's own abort passes through)."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        status = to_status(exc)
        if not status.expected:
            log_event(
                self._errors,
                "unexpected error",
                level=logging.ERROR,
                exc_info=exc,
                rpc=call.method,
                peer=call.peer_name,
            )
        call.code = status.code
        # abort() sends the status before it raises: log and free the slot first, so both are
        # done by the time the peer learns the outcome.
        self.finish(call)
        await call.context.abort(status.code, status.details, call.transport_metadata())

    def finish(self, call: _Call) -> None:
        """Release what `call` holds and write its log line; once per call."""
        if call.finished:
            return
        call.finished = True
        if call.holds_slot and call.identity is not None:
            key = call.identity.spiffe_id
            slots = self._slots(call)[0]
            left = slots.get(key, 1) - 1
            if left > 0:
                slots[key] = left
            else:
                slots.pop(key, None)
        if call.token is not None:
            # A generator closed from another context has nothing to restore.
            with contextlib.suppress(ValueError):
                unbind_peer(call.token)
        code = call.code or call.context.code() or grpc.StatusCode.OK
        # Every call, before the rate limit on log lines below (metrics are never suppressed).
        known = bool(self.authz.roles_for(call.method))
        observe_rpc(call.method, code.name, time.monotonic() - call.started, known=known)
        transport = call.transport
        quiet = code in _QUIET_CODES
        suppressed = 0
        if not quiet:
            allowed, suppressed = self._failed_lines.take_counting((call.peer_name, code))
            if not allowed:
                return
        log_event(
            self._access,
            "call",
            level=logging.INFO if quiet else logging.WARNING,
            rpc=call.method,
            peer=call.peer_name,
            code=code.name,
            duration_ms=round((time.monotonic() - call.started) * 1000, 3),
            kex_group=transport.group if transport else None,
            tls_version=transport.tls_version if transport else None,
            peer_address=call.peer_address,
            suppressed=suppressed or None,  # failed lines of this peer and code not written
        )

    # --- wrapping the four handler shapes -----------------------------------------------------

    def _wrap(self, method: str, handler: Handler) -> Handler:
        streaming = bool(handler.request_streaming or handler.response_streaming)
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            fn = self._unary_response(method, handler.unary_unary, streaming)
            return grpc.unary_unary_rpc_method_handler(fn, **kwargs)
        if handler.stream_unary is not None:
            fn = self._unary_response(method, handler.stream_unary, streaming)
            return grpc.stream_unary_rpc_method_handler(fn, **kwargs)
        if handler.unary_stream is not None:
            fn = self._stream_response(method, handler.unary_stream, streaming)
            return grpc.unary_stream_rpc_method_handler(fn, **kwargs)
        if handler.stream_stream is None:
            raise TypeError(f"handler of {method} has no behaviour")
        fn = self._stream_response(method, handler.stream_stream, streaming)
        return grpc.stream_stream_rpc_method_handler(fn, **kwargs)

    def _unary_response(self, method: str, inner: Behaviour, streaming: bool) -> Behaviour:
        async def wrapped(request: Any, context: Context) -> Any:
            call = _Call(method, context, streaming)
            try:
                self.admit(call)
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            except Exception as exc:
                await self.fail(call, exc)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self.finish(call)

        return wrapped

    def _stream_response(self, method: str, inner: Behaviour, streaming: bool) -> Behaviour:
        if inspect.isasyncgenfunction(inner):

            async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
                call = _Call(method, context, streaming)
                try:
                    self.admit(call)
                    async for response in inner(request, context):
                        yield response
                except Exception as exc:
                    await self.fail(call, exc)
                except (asyncio.CancelledError, GeneratorExit):
                    call.code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self.finish(call)

            return generator

        # Reader/writer style (`await context.write(...)`), or a plain generator.
        async def writer(request: Any, context: Context) -> None:
            call = _Call(method, context, streaming)
            try:
                self.admit(call)
                result = inner(request, context)
                if inspect.isawaitable(result):
                    await result
                elif result is not None:
                    for response in result:
                        await context.write(response)
            except Exception as exc:
                await self.fail(call, exc)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self.finish(call)

        return writer


class _Call:
    """The state of one call as it passes the checks."""

    __slots__ = (
        "code",
        "context",
        "finished",
        "holds_slot",
        "identity",
        "method",
        "peer_address",
        "started",
        "streaming",
        "token",
        "transport",
    )

    def __init__(self, method: str, context: Context, streaming: bool) -> None:
        self.method = method
        self.context = context
        # Read now: after a client cancels, grpc may have torn the call down by the time the
        # stream generator is finalised, and context.peer() then crashes the process.
        self.peer_address = context.peer()
        self.streaming = streaming
        self.started = time.monotonic()
        self.identity: Identity | None = None
        self.transport: Transport | None = None
        self.holds_slot = False
        self.token: contextvars.Token[tuple[object, Identity] | None] | None = None
        self.code: grpc.StatusCode | None = None
        self.finished = False

    @property
    def peer_name(self) -> str:
        return self.identity.spiffe_id if self.identity else "unauthenticated"

    def transport_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.transport is None:
            return ()
        return (
            (KEX_GROUP_HEADER, self.transport.group),
            (TLS_VERSION_HEADER, self.transport.tls_version),
        )


async def _unimplemented(request: Any, context: Context) -> None:
    raise UnimplementedError("method not implemented")


_UNIMPLEMENTED: Final = grpc.stream_stream_rpc_method_handler(_unimplemented)
