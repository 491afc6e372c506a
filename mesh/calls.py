"""The frame of a typed client for one mesh service: one channel, deadlines, mapped errors.

    class AnomalyClient(MeshClient[AnomalyServiceAsyncStub]):
        def _bind(self, channel):                  # the stubs of a newly opened channel
            return pb_grpc.AnomalyServiceStub(channel)
        async def model(self):
            return await self._unary(self.stubs.GetModel, request, timedelta(seconds=5))

- The channel is `mesh.channel.open_channel` (mTLS from the caller's identity files, retries of
  UNAVAILABLE with backoff): opened on entering the context (or `open()`), reused by every call,
  closed with the context.
- Every call has one deadline that its retries spend, never more.
- A failed call raises what the component's `map_error(code, details)` makes of its status, so
  each component keeps its own error tree and no caller sees a raw `grpc.RpcError`.
  `UNAVAILABLE_CODES` and `DENIED_CODES` are the groups every table sorts the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

import grpc

from mesh.channel import ChannelConfig, open_channel
from mesh.errors import ConfigError

__all__ = ["DENIED_CODES", "UNAVAILABLE_CODES", "MapError", "MeshClient", "require_positive"]

Request = TypeVar("Request")
Response = TypeVar("Response")
Stubs = TypeVar("Stubs")
MapError = Callable[[grpc.StatusCode, str], Exception]

# The service could not answer in time (down, partitioned, overloaded): worth trying later.
UNAVAILABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# The caller's identity or role is refused: retrying changes nothing.
DENIED_CODES: Final = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
)


def require_positive(config: object, *names: str) -> None:
    """ConfigError unless every timedelta attribute `names` of `config` is positive."""
    for name in names:
        if getattr(config, name) <= timedelta(0):
            raise ConfigError(name, "must be positive")


class MeshClient(ABC, Generic[Stubs]):
    """Base of a typed client: subclasses make their stubs in `_bind` and call them through
    `_unary` / `_stream`."""

    def __init__(self, channel: ChannelConfig, map_error: MapError) -> None:
        self._channel_config = channel
        self._map_error = map_error
        self._channel: grpc.aio.Channel | None = None
        self._stubs: Stubs | None = None

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
        """Open the channel (once; the identity files are checked now and raise IdentityError)."""
        if self._channel is None:
            self._channel = open_channel(self._channel_config)
            self._stubs = self._bind(self._channel)

    async def close(self) -> None:
        """Close the channel; calls still running end CANCELLED."""
        channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    @abstractmethod
    def _bind(self, channel: grpc.aio.Channel) -> Stubs:
        """The stubs of a newly opened channel."""

    @property
    def stubs(self) -> Stubs:
        """The open channel's stubs (RuntimeError before `open()` or after `close()`)."""
        if self._stubs is None:
            raise RuntimeError(
                f"the client is not open: use `async with {type(self).__name__}(...)`"
            )
        return self._stubs

    async def _unary(
        self, method: Callable[..., Awaitable[Response]], request: Request, timeout: timedelta
    ) -> Response:
        try:
            return await method(request, timeout=timeout.total_seconds())
        except grpc.aio.AioRpcError as exc:
            raise self._map_error(exc.code(), exc.details() or "") from None

    async def _stream(
        self, method: Callable[..., Any], request: object, timeout: timedelta
    ) -> AsyncIterator[Any]:
        """The messages of a server-streaming call, under one deadline for the whole stream."""
        call = method(request, timeout=timeout.total_seconds())
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise self._map_error(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()  # a caller that stops early ends the stream, not just leaves it
