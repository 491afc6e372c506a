"""The transport policy: TLS 1.3 only, hybrid post-quantum groups per role, counters."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError, PolicyViolationError
from mesh.policy import (
    DEFAULT_MODES,
    PolicyCounters,
    PqMode,
    PqPolicy,
    Transport,
    enforce,
    transport_of,
)


def _auth(group: str | None, version: str | None = "TLSv1.3") -> dict[str, list[bytes]]:
    auth: dict[str, list[bytes]] = {}
    if group is not None:
        auth["ssl_negotiated_key_exchange_group"] = [group.encode()]
    if version is not None:
        auth["ssl_tls_version"] = [version.encode()]
    return auth


def test_defaults_require_for_components_and_prefer_for_humans_and_soar() -> None:
    policy = PqPolicy()
    assert {r: policy.mode(r) for r in DEFAULT_MODES} == {
        "alpha": PqMode.REQUIRE,
        "beta": PqMode.REQUIRE,
        "cortex": PqMode.REQUIRE,
        "ml": PqMode.REQUIRE,
        "soar": PqMode.PREFER,
        "operator": PqMode.PREFER,
    }


@pytest.mark.parametrize(
    ("group", "hybrid"),
    [
        ("X25519MLKEM768", True),
        ("SecP256r1MLKEM768", True),
        ("X25519MLKEM1024", True),
        ("X25519", False),
        ("P-256", False),
        ("unknown", False),
    ],
)
def test_hybrid_groups(group: str, hybrid: bool) -> None:
    assert PqPolicy().is_hybrid(group) is hybrid


def test_require_refuses_classical_naming_the_group() -> None:
    transport = transport_of(_auth("X25519"), PqPolicy())
    with pytest.raises(PolicyViolationError, match=r"X25519 refused.*role cortex"):
        enforce(transport, "cortex", PqPolicy())


def test_prefer_allows_classical_and_require_allows_hybrid() -> None:
    policy = PqPolicy()
    classical = transport_of(_auth("X25519"), policy)
    assert classical == Transport(tls_version="TLSv1.3", group="X25519", hybrid=False)
    enforce(classical, "operator", policy)  # prefer: allowed (a refusal raises)
    with pytest.raises(PolicyViolationError):  # the same handshake, a role that requires
        enforce(classical, "alpha", policy)
    hybrid = transport_of(_auth("X25519MLKEM768"), policy)
    assert hybrid == Transport(tls_version="TLSv1.3", group="X25519MLKEM768", hybrid=True)
    enforce(hybrid, "alpha", policy)  # require: allowed


def test_missing_group_counts_as_classical() -> None:
    transport = transport_of(_auth(None), PqPolicy())
    assert transport.group == "unknown"
    with pytest.raises(PolicyViolationError, match="unknown refused"):
        enforce(transport, "ml", PqPolicy())


@pytest.mark.parametrize("version", ["TLSv1.2", None])
def test_only_tls_1_3(version: str | None) -> None:
    transport = transport_of(_auth("X25519MLKEM768", version), PqPolicy())
    with pytest.raises(PolicyViolationError, match=r"TLS 1\.3 required"):
        enforce(transport, "operator", PqPolicy())


def test_overrides_merge_over_defaults_and_are_validated() -> None:
    policy = PqPolicy(modes={"operator": PqMode.REQUIRE})
    assert policy.mode("operator") is PqMode.REQUIRE
    assert policy.mode("soar") is PqMode.PREFER
    assert PqPolicy(modes={"soar": "require"}).mode("soar") is PqMode.REQUIRE  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"modes\.wizard: unknown role"):
        PqPolicy(modes={"wizard": PqMode.PREFER})
    with pytest.raises(ConfigError, match=r"modes\.soar: must be 'require' or 'prefer'"):
        PqPolicy(modes={"soar": "maybe"})  # type: ignore[dict-item]


def test_counters_count_calls_and_classical_connections_once() -> None:
    policy, counters = PqPolicy(), PolicyCounters()
    classical = transport_of(_auth("X25519"), policy)
    hybrid = transport_of(_auth("X25519MLKEM768"), policy)
    for _ in range(3):  # three calls on one connection
        counters.record("operator", classical, "ipv4:127.0.0.1:1000", refused=False)
    counters.record("operator", classical, "ipv4:127.0.0.1:1001", refused=False)
    counters.record("cortex", classical, "ipv4:127.0.0.1:1002", refused=True)
    counters.record("cortex", hybrid, "ipv4:127.0.0.1:1003", refused=False)
    stats = counters.snapshot()
    assert stats.calls == {"operator": {"X25519": 4}, "cortex": {"X25519MLKEM768": 1}}
    assert stats.refused == {"cortex": {"X25519": 1}}
    assert stats.classical_connections == {"operator": 2, "cortex": 1}
    assert stats.calls_with("X25519MLKEM768") == 1
