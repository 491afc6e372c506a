"""Authorization: one table from full RPC name to the roles allowed to call it. Default deny.

Keys are full method names as grpc reports them, `/qsc.guardian.v1.GuardianService/Subscribe`.
Two rules are built into every table, on every server, and cannot be listed in one:

- health (`grpc.health.v1.Health/*`) is open to every authenticated role: operators and load
  balancers probe it, and it says nothing but SERVING or NOT_SERVING;
- server reflection (`grpc.reflection.v1alpha.ServerReflection/*`, and the v1 name that clients
  such as `buf curl` try first) is for the `operator` and `soar` roles only: it hands out the
  schema of every service the server hosts, which a guardian, ml or cortex certificate has no use
  for (components are built with the generated code) and a stolen one should not get for free.
  Other roles get PERMISSION_DENIED, like any RPC they may not call.

Everything else must be listed. An RPC missing from the table is denied even if a servicer
implements it::

    RPC                                         roles
    grpc.health.v1.Health/*                     every authenticated role
    grpc.reflection.v1alpha.ServerReflection/*  operator, soar
    grpc.reflection.v1.ServerReflection/*       operator, soar
    listed in the table                         the roles listed for it
    anything else                               nobody
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from crypto.pki import ROLES
from mesh.errors import ConfigError, PermissionDeniedError

EVERY_ROLE: Final = frozenset(ROLES)
_METHOD_RE: Final = re.compile(r"/[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+/[A-Za-z_]\w*")


def service_methods(service: str) -> tuple[str, ...]:
    """Full names of the RPCs of `service`, from the generated code loaded into the default pool."""
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        raise ConfigError(service, "no such service in the loaded protobuf descriptors") from None
    return tuple(f"/{service}/{method.name}" for method in descriptor.methods)


HEALTH_SERVICE: Final = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE: Final = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
# grpcio serves only v1alpha reflection. Clients such as `buf curl` try v1 first and fall back on
# UNIMPLEMENTED, so v1 is authorized like v1alpha (a denied role gets PERMISSION_DENIED, not a
# misleading UNIMPLEMENTED) and then finds no handler.
_REFLECTION_V1: Final = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
# Open to every authenticated role.
OPEN_METHODS: Final = frozenset(service_methods(HEALTH_SERVICE))
# Reflection: the roles that run tools needing the schema at run time (grpcurl, buf curl).
REFLECTION_METHODS: Final = frozenset((*service_methods(REFLECTION_SERVICE), _REFLECTION_V1))
REFLECTION_ROLES: Final = frozenset(("operator", "soar"))
BUILT_IN_METHODS: Final = OPEN_METHODS | REFLECTION_METHODS


@dataclass(frozen=True)
class AuthzTable:
    """Full RPC name -> roles allowed. Build it with `AuthzTable.of({...})`."""

    rules: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, rules: Mapping[str, Iterable[str]]) -> AuthzTable:
        """Validate names and roles; ConfigError names the offending entry."""
        checked: dict[str, frozenset[str]] = {}
        for method, roles in rules.items():
            if not _METHOD_RE.fullmatch(method):
                raise ConfigError(method, "not a full RPC name like /pkg.v1.Service/Method")
            if method in BUILT_IN_METHODS:
                # An entry here would be silently ignored by roles_for(): refuse it instead.
                raise ConfigError(
                    method, "health and reflection authorization is built in, not listed"
                )
            if isinstance(roles, str):  # a bare "operator" would become o, p, e, r...
                raise ConfigError(method, "roles must be a collection of role names, not a string")
            role_set = frozenset(roles)
            unknown = sorted(role_set - EVERY_ROLE)
            if unknown:
                raise ConfigError(
                    method, f"unknown role(s) {', '.join(unknown)}; roles: {', '.join(ROLES)}"
                )
            checked[method] = role_set
        return cls(MappingProxyType(checked))

    def roles_for(self, method: str) -> frozenset[str]:
        if method in OPEN_METHODS:
            return EVERY_ROLE
        if method in REFLECTION_METHODS:
            return REFLECTION_ROLES
        return self.rules.get(method, frozenset())

    def allows(self, method: str, role: str) -> bool:
        return role in self.roles_for(method)

    def check(self, method: str, role: str) -> None:
        """Raise PermissionDeniedError unless `role` may call `method`."""
        if not self.allows(method, role):
            raise PermissionDeniedError(f"role {role} may not call {method}")


_G, _A, _B = (
    "/qsc.guardian.v1.GuardianService",
    "/qsc.alpha.v1.AlphaService",
    "/qsc.beta.v1.BetaService",
)
_C, _M = "/qsc.cortex.v1.CortexService", "/qsc.ml.v1.AnomalyService"
_CENTRAL = ("cortex", "operator")  # the Cortex drives guardians and ml; operators may too
_CLIENTS = ("soar", "operator")  # the Cortex API serves integrations and humans

# The mesh's authorization table, every v1 RPC. Components pass it to ComponentServer (default).
MESH_AUTHZ: Final = AuthzTable.of(
    {
        f"{_G}/Subscribe": _CENTRAL,
        f"{_G}/GetStatus": _CENTRAL,
        f"{_A}/ScanMemory": _CENTRAL,
        f"{_A}/ListRules": _CENTRAL,
        f"{_A}/ValidateRules": ("operator",),
        f"{_B}/ScanIntegrity": _CENTRAL,
        f"{_B}/VerifyBackup": _CENTRAL,
        f"{_B}/CheckCertificate": _CENTRAL,
        f"{_B}/ListHealProposals": _CENTRAL,
        f"{_B}/ApproveHeal": _CENTRAL,
        f"{_B}/RejectHeal": _CENTRAL,
        f"{_C}/GetAssessment": _CLIENTS,
        f"{_C}/ListAssessments": _CLIENTS,
        f"{_C}/SubscribeAssessments": _CLIENTS,
        f"{_C}/SubmitVerdict": _CLIENTS,
        f"{_C}/GetGuardian": _CLIENTS,
        f"{_C}/ListGuardians": _CLIENTS,
        f"{_C}/GetEvent": _CLIENTS,
        f"{_C}/ListEvents": _CLIENTS,
        f"{_C}/GetPlaybookRun": _CLIENTS,
        f"{_C}/ListPlaybookRuns": _CLIENTS,
        f"{_C}/ReplayPlaybookRun": _CLIENTS,
        f"{_C}/ApprovePlaybookRun": _CLIENTS,
        f"{_C}/RejectPlaybookRun": _CLIENTS,
        f"{_M}/Score": ("cortex",),
        f"{_M}/GetModel": _CENTRAL,
    }
)
