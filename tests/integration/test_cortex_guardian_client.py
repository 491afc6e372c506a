"""cortex.guardian_client over real mTLS channels (certificates from crypto.pki).

Only the dead-port case is covered so far; the live Alpha/Beta cases are still to be written.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from cortex.errors import GuardianUnavailableError
from cortex.guardian_client import GuardianClient, GuardianClientConfig
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    d = tmp_path_factory.mktemp("pki")
    ca = init_ca(d, "guardian-client.test")
    write_leaf(issue_leaf(ca, "cortex", "c1"), d, ca.cert)
    return TlsFiles(d / "cortex-c1.crt", d / "cortex-c1.key", d / "ca.crt")


def test_dead_port_is_unavailable_within_the_deadline(tls: TlsFiles) -> None:
    asyncio.run(_dead_port(tls))


async def _dead_port(tls: TlsFiles) -> None:
    config = GuardianClientConfig(
        ChannelConfig(target="127.0.0.1:1", tls=tls), heal_timeout=timedelta(seconds=2)
    )
    async with GuardianClient(config) as client:
        started = time.monotonic()
        with pytest.raises(GuardianUnavailableError, match="UNAVAILABLE"):
            await client.reject_heal("p-1")
        assert time.monotonic() - started < 2.5
