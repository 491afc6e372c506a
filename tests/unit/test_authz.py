"""The authorization table: full RPC name -> roles, default deny, health open to every role,
reflection to operators and SOAR integrations only."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import qsc
from mesh.authz import (
    EVERY_ROLE,
    MESH_AUTHZ,
    OPEN_METHODS,
    REFLECTION_METHODS,
    AuthzTable,
)
from mesh.errors import ConfigError, PermissionDeniedError

GET_STATUS = "/qsc.guardian.v1.GuardianService/GetStatus"


def _all_qsc_rpcs() -> set[str]:
    rpcs: set[str] = set()
    for info in pkgutil.walk_packages(qsc.__path__, "qsc."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            for service in module.DESCRIPTOR.services_by_name.values():
                rpcs |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return rpcs


def test_mesh_table_covers_exactly_the_v1_api() -> None:
    assert set(MESH_AUTHZ.rules) == _all_qsc_rpcs()
    assert all(MESH_AUTHZ.rules.values()), "an entry that allows nobody should be removed"


def test_guardian_rpcs_are_for_cortex_and_operators_only() -> None:
    assert MESH_AUTHZ.roles_for(GET_STATUS) == {"cortex", "operator"}
    MESH_AUTHZ.check(GET_STATUS, "cortex")
    with pytest.raises(PermissionDeniedError, match=f"role soar may not call {GET_STATUS}"):
        MESH_AUTHZ.check(GET_STATUS, "soar")


def test_default_deny_for_anything_not_listed() -> None:
    table = AuthzTable.of({GET_STATUS: ["operator"]})
    assert not table.allows("/qsc.guardian.v1.GuardianService/Subscribe", "operator")
    assert not table.allows("/no.such.v1.Service/Method", "operator")
    assert not table.allows(GET_STATUS, "alpha")


HEALTH = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
)
REFLECTION = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",  # what buf curl tries first
)


@pytest.mark.parametrize("table", [AuthzTable.of({}), MESH_AUTHZ], ids=["empty", "mesh"])
def test_health_is_open_to_every_role(table: AuthzTable) -> None:
    assert set(HEALTH) == OPEN_METHODS
    for method in HEALTH:
        assert table.roles_for(method) == EVERY_ROLE
        for role in EVERY_ROLE:
            table.check(method, role)


@pytest.mark.parametrize("table", [AuthzTable.of({}), MESH_AUTHZ], ids=["empty", "mesh"])
def test_reflection_is_for_operators_and_soar_only(table: AuthzTable) -> None:
    assert set(REFLECTION) == REFLECTION_METHODS
    assert not REFLECTION_METHODS & OPEN_METHODS
    for method in REFLECTION:
        assert table.roles_for(method) == {"operator", "soar"}
        table.check(method, "operator")
        table.check(method, "soar")
        for role in ("alpha", "beta", "cortex", "ml"):
            assert not table.allows(method, role)
            with pytest.raises(PermissionDeniedError, match=f"^role {role} may not call {method}$"):
                table.check(method, role)


@pytest.mark.parametrize("method", [*HEALTH, *REFLECTION])
def test_built_in_rules_cannot_be_listed(method: str) -> None:
    # A listed entry would be ignored, so a table that tried to open reflection to alpha (or
    # close health) would silently not mean what it says.
    with pytest.raises(ConfigError, match="authorization is built in"):
        AuthzTable.of({method: ["alpha"]})


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"GetStatus": ["operator"]}, "not a full RPC name"),
        ({"/qsc.guardian.v1.GuardianService/": ["operator"]}, "not a full RPC name"),
        ({GET_STATUS: ["operator", "root"]}, "unknown role"),
        ({GET_STATUS: "operator"}, "not a string"),
    ],
)
def test_bad_entries_fail_naming_the_entry(rules: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthzTable.of(rules)  # type: ignore[arg-type]
