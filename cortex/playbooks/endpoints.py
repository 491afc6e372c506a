"""One configured receiver: how a delivery reaches it, and what its answer means.

    endpoint = Endpoint.of(section)          # secrets read now (PlaybookSecretError)
    judgement = await endpoint.post(webhook_id, body)
    await endpoint.close()

An HTTP/1.1 client per endpoint (httpx: pooled connections up to `max_in_flight`, the timeout
per attempt bounding connect, send and the whole answer). Redirects are never followed, proxies
from the environment are never used: a delivery goes to the configured URL or nowhere. HTTPS
checks the receiver's certificate against `ca_file` (else the system's CAs). Each attempt is
signed afresh (`webhook-timestamp` is the attempt's time, so a receiver's tolerance window
holds on a retry days later); the `webhook-id` and the body stay the same.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from cortex.breaker import CircuitBreaker
from cortex.config import EndpointSection
from cortex.errors import PlaybookSecretError
from cortex.playbooks.payloads import CONTENT_TYPE
from cortex.playbooks.retry import Judgement, judge
from cortex.playbooks.signing import HeaderToken, SigningSecrets

__all__ = ["USER_AGENT", "Endpoint"]

USER_AGENT = "qsc-cortex-playbooks/1"


@dataclass
class Endpoint:
    section: EndpointSection
    auth: SigningSecrets | HeaderToken | None = field(repr=False)
    breaker: CircuitBreaker
    token: HeaderToken | None = field(default=None, repr=False)  # besides a signature
    in_flight: int = 0
    _client: httpx.AsyncClient | None = field(default=None, repr=False)
    _clock_s: Callable[[], float] = time.time

    @classmethod
    def of(cls, section: EndpointSection) -> Endpoint:
        auth: SigningSecrets | HeaderToken | None = None
        token = None
        try:
            if section.token_file is not None:
                token = HeaderToken.from_file(section.header, section.token_file)
            if section.auth == "standard-webhooks":
                auth = SigningSecrets.from_files(section.secret_files)
            elif section.auth == "header":
                auth, token = token, None
        except PlaybookSecretError as exc:
            raise PlaybookSecretError(f"endpoint {section.name}: {exc}") from None
        breaker = CircuitBreaker(
            section.failures_to_open, int(section.open_for.total_seconds() * 1e9)
        )
        return cls(section, auth, breaker, token)

    @property
    def name(self) -> str:
        return self.section.name

    @property
    def full(self) -> bool:
        return self.in_flight >= self.section.max_in_flight

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.section
            verify: ssl.SSLContext | bool = False
            if s.url.startswith("https:"):
                verify = ssl.create_default_context(
                    cafile=None if s.ca_file is None else str(s.ca_file)
                )
            self._client = httpx.AsyncClient(
                verify=verify,
                timeout=httpx.Timeout(s.timeout.total_seconds()),
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(
                    max_connections=s.max_in_flight, max_keepalive_connections=s.max_in_flight
                ),
                headers={"user-agent": USER_AGENT},
            )
        return self._client

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        now = int(self._clock_s())
        if self.auth is None:
            base = {"webhook-id": msg_id, "webhook-timestamp": str(now)}
        else:
            base = self.auth.headers(msg_id, now, body)
        if self.token is not None:
            base[self.token.name] = self.token.token
        return {**base, "content-type": CONTENT_TYPE}

    async def post(self, msg_id: str, body: bytes) -> Judgement:
        """One attempt; never raises for what the network or the receiver does."""
        timeout = self.section.timeout.total_seconds()
        self.in_flight += 1
        try:
            async with asyncio.timeout(timeout):
                response = await self._http().post(
                    self.section.url, content=body, headers=self.headers(msg_id, body)
                )
        except TimeoutError:
            return judge(None, error=f"no answer within {timeout:g}s")
        except httpx.TimeoutException:
            return judge(None, error=f"no answer within {timeout:g}s")
        except httpx.HTTPError as exc:
            return judge(None, error=f"{type(exc).__name__}: {exc}"[:300])
        except ssl.SSLError as exc:
            return judge(None, error=f"TLS: {exc}"[:300])
        finally:
            self.in_flight -= 1
        return judge(response.status_code, retry_after=response.headers.get("retry-after"))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
