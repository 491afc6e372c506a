"""`mesh.channel` against real mTLS grpc.aio servers on loopback, with certificates from the PKI.

The servers answer `grpc.health.v1.Health` from a script (status per attempt, optional sleep) and
count attempts server-side, so retries, caps and deadlines are observed where they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crypto import pki
from mesh.channel import (
    ChannelConfig,
    RetryPolicy,
    channel_credentials,
    channel_options,
    deadline_interceptors,
    open_channel,
    retry_interceptors,
)
from mesh.config import TlsFiles
from mesh.errors import IdentityError

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Pki:
    dir: Path

    def server(self, stem: str = "cortex-127.0.0.1") -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [((self.dir / f"{stem}.key").read_bytes(), (self.dir / f"{stem}.crt").read_bytes())],
            root_certificates=(self.dir / "ca.crt").read_bytes(),
            require_client_auth=True,
        )

    @property
    def client(self) -> TlsFiles:
        return TlsFiles.in_dir(self.dir, "operator-ops-1")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = pki.init_ca(base, "mesh.test")
    for role, host in (("cortex", "127.0.0.1"), ("cortex", "central"), ("operator", "ops-1")):
        pki.write_leaf(pki.issue_leaf(ca, role, host), base, ca.cert)
    return Pki(base)


class Scripted(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers attempt i with `codes[i]` (then OK), after `sleep`; records when and how long."""

    def __init__(
        self,
        codes: Sequence[grpc.StatusCode] = (),
        *,
        sleep: float = 0.0,
        messages: int = 3,
        fail_after_first: grpc.StatusCode | None = None,
    ) -> None:
        self.codes, self.sleep, self.messages = list(codes), sleep, messages
        self.fail_after_first = fail_after_first
        self.times: list[float] = []
        self.remaining: list[float | None] = []

    async def _attempt(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        self.times.append(time.monotonic())
        self.remaining.append(context.time_remaining())
        code = self.codes[len(self.times) - 1] if len(self.times) <= len(self.codes) else OK
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if code != OK:
            await context.abort(code, f"scripted {code.name}")

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> health_pb2.HealthCheckResponse:
        await self._attempt(context)
        return health_pb2.HealthCheckResponse(status=SERVING)

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        await self._attempt(context)
        for _ in range(self.messages):
            yield health_pb2.HealthCheckResponse(status=SERVING)
            if self.fail_after_first is not None:
                await context.abort(self.fail_after_first, "scripted mid-stream failure")

    @property
    def attempts(self) -> int:
        return len(self.times)


@contextlib.asynccontextmanager
async def serving(
    certs: Pki,
    servicer: health_pb2_grpc.HealthServicer,
    *,
    port: int = 0,
    stem: str = "cortex-127.0.0.1",
) -> AsyncIterator[int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_secure_port(f"127.0.0.1:{port}", certs.server(stem))
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(None)


def config(certs: Pki, port: int, **kw: object) -> ChannelConfig:
    retry = kw.pop(
        "retry", RetryPolicy(max_attempts=4, initial_backoff=20 * MS, max_backoff=80 * MS)
    )
    return ChannelConfig(target=f"127.0.0.1:{port}", tls=certs.client, retry=retry, **kw)  # type: ignore[arg-type]


def request() -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest()


async def check(cfg: ChannelConfig, **kw: float) -> health_pb2.HealthCheckResponse:
    async with open_channel(cfg) as channel:
        reply: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(channel).Check(
            request(), **kw
        )
        return reply


async def check_error(cfg: ChannelConfig, **kw: float) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(cfg, **kw)
    return info.value


# --- plain calls and deadlines --------------------------------------------------------------


def test_call_succeeds_over_mtls_with_the_real_health_service(certs: Pki) -> None:
    async def run() -> health_pb2.HealthCheckResponse:
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        await servicer.set("", SERVING)
        async with serving(certs, servicer) as port:
            return await check(config(certs, port))

    assert asyncio.run(run()).status == SERVING


def test_default_deadline_is_applied_when_the_caller_gives_none(certs: Pki) -> None:
    servicer = Scripted(sleep=2.0)

    async def run() -> tuple[grpc.aio.AioRpcError, float]:
        async with serving(certs, servicer) as port:
            start = time.monotonic()
            err = await check_error(config(certs, port, default_timeout=200 * MS))
            return err, time.monotonic() - start

    err, elapsed = asyncio.run(run())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5  # not the servicer's 2 s
    assert servicer.attempts == 1  # DEADLINE_EXCEEDED is never retried
    remaining = servicer.remaining[0]
    assert remaining is not None
    assert 0.05 < remaining <= 0.2


def test_the_callers_timeout_wins_over_the_default(certs: Pki) -> None:
    servicer = Scripted(sleep=2.0)

    async def run() -> grpc.aio.AioRpcError:
        async with serving(certs, servicer) as port:
            return await check_error(config(certs, port), timeout=0.15)

    assert asyncio.run(run()).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    remaining = servicer.remaining[0]
    assert remaining is not None
    assert remaining <= 0.15


def test_server_name_override_dials_an_address_the_certificate_does_not_name(certs: Pki) -> None:
    # cortex-central has only DNS:central; dialled by IP it must be named explicitly.
    async def run() -> tuple[health_pb2.HealthCheckResponse, grpc.aio.AioRpcError]:
        async with serving(certs, Scripted(), stem="cortex-central") as port:
            good = await check(config(certs, port, server_name_override="central"))
            bad = await check_error(config(certs, port, retry=RetryPolicy(max_attempts=1)))
            return good, bad

    good, bad = asyncio.run(run())
    assert good.status == SERVING
    assert bad.code() == UNAVAILABLE


# --- retries --------------------------------------------------------------------------------


def test_unavailable_twice_then_ok_succeeds_on_the_third_attempt_after_backoff(
    certs: Pki,
) -> None:
    servicer = Scripted([UNAVAILABLE, UNAVAILABLE])
    retry = RetryPolicy(max_attempts=4, initial_backoff=30 * MS, max_backoff=200 * MS, jitter=False)

    async def run() -> health_pb2.HealthCheckResponse:
        async with serving(certs, servicer) as port:
            return await check(config(certs, port, retry=retry))

    assert asyncio.run(run()).status == SERVING
    assert servicer.attempts == 3
    gaps = [b - a for a, b in zip(servicer.times, servicer.times[1:], strict=False)]
    assert gaps[0] >= 0.030
    assert gaps[1] >= 0.060


def test_a_server_that_starts_within_the_retry_window_is_reached(
    certs: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nobody listens on, until the server takes it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servicer = Scripted()
    retry = RetryPolicy(max_attempts=30, initial_backoff=50 * MS, max_backoff=150 * MS)

    async def run() -> health_pb2.HealthCheckResponse:
        started = asyncio.Event()
        stop = asyncio.Event()

        async def late_server() -> None:
            await asyncio.sleep(0.4)
            async with serving(certs, servicer, port=port):
                started.set()
                await stop.wait()

        task = asyncio.create_task(late_server())
        try:
            return await check(config(certs, port, retry=retry))
        finally:
            stop.set()
            await task

    with caplog.at_level(logging.DEBUG, logger="mesh.channel"):
        reply = asyncio.run(run())
    assert reply.status == SERVING
    assert servicer.attempts == 1
    retries = [r for r in caplog.records if r.getMessage() == "retrying call"]
    assert retries, "the first attempts must have met the closed port"
    assert all(r.fields["code"] == "UNAVAILABLE" for r in retries)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED]
)
def test_other_codes_are_never_retried(certs: Pki, code: grpc.StatusCode) -> None:
    servicer = Scripted([code])

    async def run() -> grpc.aio.AioRpcError:
        async with serving(certs, servicer) as port:
            return await check_error(config(certs, port))

    err = asyncio.run(run())
    assert err.code() == code
    assert servicer.attempts == 1


def test_attempts_are_capped_at_max_attempts(certs: Pki) -> None:
    servicer = Scripted([UNAVAILABLE] * 10)
    retry = RetryPolicy(max_attempts=3, initial_backoff=10 * MS, max_backoff=20 * MS)

    async def run() -> grpc.aio.AioRpcError:
        async with serving(certs, servicer) as port:
            return await check_error(config(certs, port, retry=retry))

    err = asyncio.run(run())
    assert err.code() == UNAVAILABLE
    assert err.details() == "scripted UNAVAILABLE"
    assert servicer.attempts == 3


def test_one_deadline_bounds_all_attempts(certs: Pki) -> None:
    servicer = Scripted([UNAVAILABLE] * 50)
    retry = RetryPolicy(
        max_attempts=50,
        initial_backoff=100 * MS,
        max_backoff=100 * MS,
        multiplier=1.0,
        jitter=False,
    )

    async def run() -> tuple[grpc.aio.AioRpcError, float]:
        async with serving(certs, servicer) as port:
            start = time.monotonic()
            err = await check_error(config(certs, port, retry=retry, default_timeout=350 * MS))
            return err, time.monotonic() - start

    err, elapsed = asyncio.run(run())
    assert err.code() == UNAVAILABLE  # the last attempt's status, not a synthetic one
    assert 2 <= servicer.attempts <= 4  # 0, 100, 200 (300) ms: not 50
    assert elapsed < 2.0
    # Each attempt carried what was left of the one deadline.
    remaining = [r for r in servicer.remaining if r is not None]
    assert len(remaining) == servicer.attempts
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[0] <= 0.35


def test_jitter_keeps_each_wait_within_zero_and_the_backoff(certs: Pki) -> None:
    servicer = Scripted([UNAVAILABLE] * 5)
    retry = RetryPolicy(max_attempts=6, initial_backoff=10 * MS, max_backoff=40 * MS)
    waits: list[float] = []

    async def recording_sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(delay)

    async def run() -> health_pb2.HealthCheckResponse:
        async with serving(certs, servicer) as port:
            cfg = config(certs, port, retry=retry)
            interceptors = [
                *deadline_interceptors(cfg.default_timeout),
                *retry_interceptors(retry, sleep=recording_sleep),
            ]
            async with grpc.aio.secure_channel(
                cfg.target,
                channel_credentials(cfg.tls),
                options=channel_options(cfg),
                interceptors=interceptors,
            ) as channel:
                reply: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(
                    channel
                ).Check(request())
                return reply

    assert asyncio.run(run()).status == SERVING
    assert servicer.attempts == 6
    bounds = [retry.backoff(n) for n in range(1, 6)]
    assert bounds == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.04])
    assert all(0.0 <= w <= b for w, b in zip(waits, bounds, strict=True))
    gaps = [b - a for a, b in zip(servicer.times, servicer.times[1:], strict=False)]
    assert all(gap >= w for gap, w in zip(gaps, waits, strict=True))


def test_full_jitter_spreads_over_the_whole_interval() -> None:
    policy = RetryPolicy(initial_backoff=100 * MS, max_backoff=400 * MS)
    rng = random.Random(7)
    for retry in (1, 2, 3, 6):
        samples = [policy.delay(retry, rng.random) for _ in range(2000)]
        bound = min(0.4, 0.1 * 2 ** (retry - 1))
        assert all(0.0 <= s <= bound for s in samples)
        assert min(samples) < 0.05 * bound
        assert max(samples) > 0.95 * bound
    assert RetryPolicy(jitter=False).delay(2) == pytest.approx(0.4)


# --- server streams -------------------------------------------------------------------------


async def _watch(cfg: ChannelConfig) -> tuple[list[int], grpc.StatusCode | None, grpc.StatusCode]:
    got: list[int] = []
    error = None
    async with open_channel(cfg) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(request())
        try:
            async for reply in call:
                got.append(reply.status)
        except grpc.aio.AioRpcError as exc:
            error = exc.code()
        return got, error, await call.code()


def test_a_stream_that_failed_before_its_first_message_is_retried(certs: Pki) -> None:
    servicer = Scripted([UNAVAILABLE, UNAVAILABLE], messages=3)

    async def run() -> tuple[list[int], grpc.StatusCode | None, grpc.StatusCode]:
        async with serving(certs, servicer) as port:
            return await _watch(config(certs, port))

    got, error, code = asyncio.run(run())
    assert (got, error, code) == ([SERVING] * 3, None, OK)
    assert servicer.attempts == 3


def test_a_stream_that_delivered_a_message_is_never_retried(certs: Pki) -> None:
    servicer = Scripted(messages=3, fail_after_first=UNAVAILABLE)

    async def run() -> tuple[list[int], grpc.StatusCode | None, grpc.StatusCode]:
        async with serving(certs, servicer) as port:
            return await _watch(config(certs, port))

    got, error, code = asyncio.run(run())
    assert (got, error, code) == ([SERVING], UNAVAILABLE, UNAVAILABLE)
    assert servicer.attempts == 1


def test_streams_get_stream_timeout_not_the_unary_default(certs: Pki) -> None:
    servicer = Scripted(messages=1)

    async def run() -> None:
        async with serving(certs, servicer) as port:
            await _watch(config(certs, port, default_timeout=200 * MS))
            await _watch(config(certs, port, default_timeout=200 * MS, stream_timeout=3000 * MS))

    asyncio.run(run())
    unbounded, bounded = servicer.remaining
    assert unbounded is None  # a Subscribe stream lives as long as it needs
    assert bounded is not None
    assert 2.0 < bounded <= 3.0


# --- identity files -------------------------------------------------------------------------


def test_a_key_readable_by_others_is_refused_naming_the_file(certs: Pki, tmp_path: Path) -> None:
    key = tmp_path / "loose.key"
    key.write_bytes(certs.client.key.read_bytes())
    key.chmod(0o644)
    tls = TlsFiles(cert=certs.client.cert, key=key, ca=certs.client.ca)
    with pytest.raises(IdentityError, match=r"loose\.key.*chmod 600"):
        channel_credentials(tls)


def test_a_missing_certificate_is_refused_naming_the_file(certs: Pki, tmp_path: Path) -> None:
    tls = TlsFiles(cert=tmp_path / "nope.crt", key=certs.client.key, ca=certs.client.ca)
    with pytest.raises(IdentityError, match=r"nope\.crt: no such file"):
        channel_credentials(tls)
