"""The authorization table: full RPC name -> roles, default deny, health and reflection open."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import qsc
from mesh.authz import EVERY_ROLE, MESH_AUTHZ, OPEN_METHODS, AuthzTable
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


def test_health_and_reflection_are_open_to_every_role() -> None:
    table = AuthzTable.of({})
    assert {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    } <= OPEN_METHODS
    for method in OPEN_METHODS:
        assert table.roles_for(method) == EVERY_ROLE


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
