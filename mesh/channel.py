"""Client channels for components and the CLI: mTLS identity, deadlines, retries on UNAVAILABLE.

    tls = TlsFiles.in_dir(Path("/etc/qsc/pki"), "cortex-c1")
    channel = open_channel(ChannelConfig(target="10.0.0.5:7443", tls=tls))
    reply = await HealthStub(channel).Check(HealthCheckRequest())

- Identity: the component's certificate, key and the deployment CA, checked at open by
  `mesh.identity.load_tls`; grpcio's TLS stack offers the hybrid X25519MLKEM768 group by itself.
- Transport (`mesh.transport_guard`, outermost): before the first call on a connection, one
  Health/Check learns what the handshake negotiated; a role that requires a hybrid group (the
  certificate's role under `mesh.policy`, or `pq_mode`) sends nothing over a classical one.
- Deadlines: a unary call without `timeout=` gets `default_timeout`. Streaming calls get
  `stream_timeout`, None by default: a Subscribe stream lives for hours, and keepalive (not a
  deadline) detects a dead peer; pass `timeout=` to bound one.
- Retries (`RetryPolicy`): only on UNAVAILABLE, with exponential backoff and full jitter, within
  the call's deadline (one deadline for all attempts). Unary-unary calls, and unary-stream calls
  until their first message: a stream that delivered anything is never replayed here (the stream
  client library resumes from its cursor). Client-streaming calls are never retried. A retried
  unary-stream call answers `initial_metadata()` only once its first message (or end) arrived.
- The channel's reconnect backoff follows the retry policy, so a retry after a refused connection
  really dials again instead of failing fast on a channel still in its own (1 s+) backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any, Final

import grpc

from mesh import identity
from mesh.backoff import backoff_bound, jittered_delay
from mesh.config import TlsFiles
from mesh.errors import ConfigError
from mesh.identity import load_tls
from mesh.logs import log_event
from mesh.policy import PqMode, PqPolicy
from mesh.transport_guard import TransportGuard

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_MS: Final = timedelta(milliseconds=1)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retry UNAVAILABLE up to `max_attempts` calls in all (1 = never retry).

    Before retry n (n = 1 for the second attempt) the client waits a random time in
    [0, min(max_backoff, initial_backoff * multiplier**(n-1))] ("full jitter", so that many
    clients cut off together do not come back in lockstep), or exactly that bound without jitter.
    """

    max_attempts: int = 4
    initial_backoff: timedelta = timedelta(milliseconds=200)
    max_backoff: timedelta = timedelta(seconds=5)
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ConfigError("max_attempts", f"must be in 1..100, got {self.max_attempts}")
        if self.initial_backoff <= timedelta(0):
            raise ConfigError("initial_backoff", "must be positive")
        if self.max_backoff < self.initial_backoff:
            raise ConfigError("max_backoff", "must be at least initial_backoff")
        if not self.multiplier >= 1.0:
            raise ConfigError("multiplier", f"must be at least 1.0, got {self.multiplier}")

    def backoff(self, retry: int) -> float:
        """The upper bound, in seconds, of the wait before retry `retry` (1-based)."""
        return backoff_bound(
            retry,
            initial=self.initial_backoff.total_seconds(),
            maximum=self.max_backoff.total_seconds(),
            multiplier=self.multiplier,
        )

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait, in seconds, before retry `retry`: uniform in [0, backoff] with jitter."""
        return jittered_delay(self.backoff(retry), 1.0 if self.jitter else 0.0, rng)


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """Where and how to dial; a `[client]`-style section components can embed in their config."""

    target: str
    tls: TlsFiles
    # Dial an address whose certificate names the server differently (e.g. an IP vs DNS SAN).
    server_name_override: str | None = None
    default_timeout: timedelta = timedelta(seconds=10)
    stream_timeout: timedelta | None = None
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Servers must accept pings this often (grpc.http2.min_recv_ping_interval_without_data_ms).
    keepalive_time: timedelta = timedelta(seconds=60)
    keepalive_timeout: timedelta = timedelta(seconds=20)
    # None: the policy's mode for this certificate's role (require for components).
    pq_mode: PqMode | None = None

    def __post_init__(self) -> None:
        if not self.target.strip():
            raise ConfigError("target", "must not be empty (HOST:PORT)")
        if self.server_name_override is not None and not self.server_name_override.strip():
            raise ConfigError("server_name_override", "must not be empty when set")
        if self.default_timeout <= timedelta(0):
            raise ConfigError("default_timeout", "must be positive")
        if self.stream_timeout is not None and self.stream_timeout <= timedelta(0):
            raise ConfigError("stream_timeout", "must be positive when set")
        if not 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise ConfigError("max_message_bytes", "must be in 1024..2147483647")
        if self.keepalive_time < timedelta(seconds=1):
            raise ConfigError("keepalive_time", "must be at least 1s")
        if self.keepalive_timeout <= timedelta(0):
            raise ConfigError("keepalive_timeout", "must be positive")


# --- credentials and options ----------------------------------------------------------------


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """mTLS credentials from the identity files, checked by `mesh.identity.load_tls` (key 0600
    and matching the certificate, certificate chaining to the CA); IdentityError names the file."""
    return _credentials(load_tls(identity.TlsFiles(cert=tls.cert, key=tls.key, ca=tls.ca)))


def _credentials(material: identity.TlsMaterial) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=material.root_certificates,
        private_key=material.private_key,
        certificate_chain=material.cert_chain,
    )


def _ms(value: timedelta) -> int:
    return max(1, value // _MS)


def channel_options(config: ChannelConfig) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", _ms(config.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(config.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.initial_reconnect_backoff_ms", _ms(config.retry.initial_backoff)),
        ("grpc.max_reconnect_backoff_ms", _ms(config.retry.max_backoff)),
        # Our interceptor owns retries; a service config from DNS TXT must not add others.
        ("grpc.service_config_disable_resolution", 1),
    ]
    if config.server_name_override is not None:
        options.append(("grpc.ssl_target_name_override", config.server_name_override))
    return options


def open_channel(
    config: ChannelConfig,
    *,
    interceptors: Sequence[Any] = (),
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """A `grpc.aio` channel with the deadline and retry interceptors outermost.

    Extra `interceptors` run inside them, so once per attempt; grpc.aio uses an interceptor
    object for one arity only (the first it implements). Call it inside the event loop.
    """
    material = load_tls(
        identity.TlsFiles(cert=config.tls.cert, key=config.tls.key, ca=config.tls.ca)
    )
    role = material.identity.role
    guard = TransportGuard(role, config.pq_mode or PqPolicy().mode(role))
    chain: list[Any] = [
        *guard.interceptors(),  # outermost: its Health/Check gets the deadline and the retries
        *deadline_interceptors(config.default_timeout, config.stream_timeout),
        *retry_interceptors(config.retry),
        *interceptors,
    ]
    channel = grpc.aio.secure_channel(
        config.target,
        _credentials(material),
        options=[*channel_options(config), *options],
        interceptors=chain,
    )
    guard.attach(channel)
    return channel


# --- interceptors ---------------------------------------------------------------------------


def _with_timeout(details: Any, timeout: float | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor object under the first arity it implements only, so each
# behaviour below is one class per arity, built by a factory.


class _Deadline:
    def __init__(self, default_timeout: timedelta, stream_timeout: timedelta | None) -> None:
        self._unary = default_timeout.total_seconds()
        self._stream = None if stream_timeout is None else stream_timeout.total_seconds()

    def _details(self, details: Any, *, unary: bool) -> Any:
        if details.timeout is not None:
            return details
        return _with_timeout(details, self._unary if unary else self._stream)


class _UnaryUnaryDeadline(_Deadline, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details, unary=True), request)


class _UnaryStreamDeadline(_Deadline, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details, unary=False), request)


class _StreamUnaryDeadline(_Deadline, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details, unary=False), requests)


class _StreamStreamDeadline(_Deadline, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details, unary=False), requests)


def deadline_interceptors(
    default_timeout: timedelta, stream_timeout: timedelta | None = None
) -> list[Any]:
    """Give every call a deadline unless its caller chose one: `default_timeout` for unary
    calls, `stream_timeout` (None: no deadline) for calls with a stream on either side."""
    return [
        cls(default_timeout, stream_timeout)
        for cls in (
            _UnaryUnaryDeadline,
            _UnaryStreamDeadline,
            _StreamUnaryDeadline,
            _StreamStreamDeadline,
        )
    ]


class _Retry:
    def __init__(
        self, policy: RetryPolicy, rng: Callable[[], float], sleep: Callable[[float], Any]
    ) -> None:
        self._policy, self._rng, self._sleep = policy, rng, sleep

    def _retry_delay(
        self, code: grpc.StatusCode, attempt: int, deadline: float | None, method: Any
    ) -> float | None:
        """The wait before another attempt, or None to give up with this attempt's result."""
        if code != grpc.StatusCode.UNAVAILABLE or attempt >= self._policy.max_attempts:
            return None
        delay = self._policy.delay(attempt, self._rng)
        now = asyncio.get_running_loop().time()
        if deadline is not None and now + delay >= deadline:
            return None
        log_event(
            _log,
            "retrying call",
            level=logging.DEBUG,
            rpc=method.decode() if isinstance(method, bytes) else str(method),
            code=code.name,
            attempt=attempt,
            delay_ms=round(delay * 1000, 1),
        )
        return delay

    @staticmethod
    def _deadline(details: Any) -> float | None:
        if details.timeout is None:
            return None
        return float(asyncio.get_running_loop().time() + details.timeout)

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(0.0, deadline - asyncio.get_running_loop().time())


class _UnaryUnaryRetry(_Retry, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        deadline = self._deadline(details)
        attempt = 1
        while True:
            call = await continuation(_with_timeout(details, self._remaining(deadline)), request)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                delay = self._retry_delay(exc.code(), attempt, deadline, details.method)
                if delay is None:
                    return call  # awaiting it again raises this attempt's error
            except asyncio.CancelledError:
                call.cancel()
                raise
            else:
                return call  # the call, not the reply: callers keep its metadata and status
            await self._sleep(delay)
            attempt += 1


class _UnaryStreamRetry(_Retry, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        deadline = self._deadline(details)
        attempt = 1
        while True:
            call = await continuation(_with_timeout(details, self._remaining(deadline)), request)
            responses = call.__aiter__()
            try:
                first = await responses.__anext__()
            except StopAsyncIteration:
                return _chain((), responses)
            except grpc.aio.AioRpcError as exc:
                delay = self._retry_delay(exc.code(), attempt, deadline, details.method)
                if delay is None:
                    raise
            except asyncio.CancelledError:
                call.cancel()
                raise
            else:
                # From here on the stream has delivered: its errors go to the caller as they are.
                return _chain((first,), responses)
            await self._sleep(delay)
            attempt += 1


def retry_interceptors(
    policy: RetryPolicy,
    *,
    rng: Callable[[], float] = random.random,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> list[Any]:
    """Retry UNAVAILABLE on unary-unary and (before their first message) unary-stream calls.

    Place them inside the deadline interceptors: they spend the call's one deadline.
    """
    return [_UnaryUnaryRetry(policy, rng, sleep), _UnaryStreamRetry(policy, rng, sleep)]


async def _chain(head: Sequence[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in head:
        yield item
    async for item in rest:
        yield item
