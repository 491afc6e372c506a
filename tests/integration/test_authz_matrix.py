"""The authorization matrix, generated from the proto descriptors and run against the real servers.

Every RPC of every service in the generated `qsc.*` code (`*_pb2` descriptors, never a hand list),
on every real component server that hosts it, is called over real mTLS on 127.0.0.1:0 by each
role's certificate (alpha, beta, cortex, ml, soar, operator) and by three identities that must
never get a call in: no client certificate, a certificate from a foreign CA (same trust domain),
and an expired certificate of the right CA. The outcome must be what `mesh.authz.MESH_AUTHZ` says:

- allowed role: admitted, i.e. any status but PERMISSION_DENIED, UNAUTHENTICATED or UNIMPLEMENTED
  (INVALID_ARGUMENT for an empty request is fine; a stream counts once its first message, its
  end or its short deadline arrives);
- other role: PERMISSION_DENIED with the interceptor's own `role R may not call M`;
- bad identity: refused by the TLS handshake (UNAVAILABLE from the transport) or UNAUTHENTICATED.

The table itself is checked against the descriptors both ways (an RPC without an entry, an entry
without an RPC, a service no server in the matrix hosts all fail), and what each server hosts is
read back from its reflection. Requests are empty except where empty means real work or a
different gate: ScanMemory names an impossible pid (empty scans every process), Subscribe offers
a sealed session (an unsealed cortex subscription is refused by the servicer, by design).

Servers, as the other integration tests run them: Alpha's guardian (mesh.guardian.Guardian with
the real AlphaServicer, no eBPF sources), the Cortex and the ML service in-process on loop
threads; Beta as the `python -m beta run` process. Calls run concurrently from one asyncio client,
so the streams' deadlines overlap. A classical handshake (TlsRelay: Python's OpenSSL has no
ML-KEM) shows a `require` role refused on an RPC it is allowed, and a `prefer` role still admitted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import os
import pkgutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor, message_factory
from grpc_reflection.v1alpha import reflection_pb2

import qsc
from alpha.memscan import MemoryScanner, ScanMemoryCore
from alpha.pipeline import Pipeline
from alpha.rules import RuleEngine
from alpha.server import AlphaServicer
from beta.__main__ import main as beta_main
from cortex.app import Cortex
from cortex.config import CortexConfig
from crypto.keyring import KeyManager
from crypto.pki import ROLES, CertificateAuthority, create_ca, init_ca, issue_leaf, write_leaf
from mesh.authz import MESH_AUTHZ
from mesh.config import TlsFiles, config_from_dict
from mesh.guardian import Guardian, GuardianConfig
from mesh.identity import load_tls, signing_key
from mesh.policy import PqMode, PqPolicy
from mesh.server import ComponentServer
from mesh.stream.batching import subscribe_context
from mesh.stream.sealing import SubscriberHandshake
from ml.app import MlService
from ml.config import MlConfig
from qsc.alpha.v1 import alpha_service_pb2
from qsc.guardian.v1 import guardian_service_pb2, guardian_service_pb2_grpc

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # plain `pytest` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.integration.loop_thread import LoopThread
from tests.integration.ml_harness import service_config, train_models
from tests.integration.tls_relay import TlsRelay

ROOT: Final = Path(__file__).resolve().parents[2]
TD: Final = "authz.test"
HOST: Final = "127.0.0.1"
CLIENT_HOST: Final = "matrix"
UNARY_DEADLINE: Final = 5.0  # seconds; every unary call here answers in milliseconds
STREAM_WINDOW: Final = 1.5  # seconds a stream gets to say something before it is cancelled
START_WAIT: Final = 20.0
# Identities that must be refused before any call reaches the mesh interceptor.
NO_CERT, FOREIGN_CA, EXPIRED = "no-certificate", "foreign-ca", "expired"
BAD_IDENTITIES: Final = (NO_CERT, FOREIGN_CA, EXPIRED)
IDENTITIES: Final = (*ROLES, *BAD_IDENTITIES)
# Codes that mean the call was not admitted (UNIMPLEMENTED: the matrix called a server that does
# not serve the method, which would otherwise pass for "allowed").
NOT_ADMITTED: Final = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
CLASSICAL_REFUSAL: Final = "classical key exchange X25519 refused"


# --- the descriptors ----------------------------------------------------------------------------


def descriptor_services() -> dict[str, descriptor.ServiceDescriptor]:
    """Every service of every generated `qsc.*` `_pb2` module, by full name."""
    found: dict[str, descriptor.ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(qsc.__path__, f"{qsc.__name__}."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            found.update(module.DESCRIPTOR.services_by_name.items())
    return {service.full_name: service for service in found.values()}


def rpc_path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


SERVICES: Final = descriptor_services()
METHODS: Final = {rpc_path(m): m for s in SERVICES.values() for m in s.methods}

_GUARDIAN = guardian_service_pb2.DESCRIPTOR.services_by_name["GuardianService"].full_name
_ALPHA = alpha_service_pb2.DESCRIPTOR.services_by_name["AlphaService"].full_name
# Which real server hosts which service; test_every_service_is_hosted_as_reflection_says checks
# this against the descriptors (nothing left out) and against each server's reflection.
HOSTED: Final[Mapping[str, tuple[str, ...]]] = {
    "alpha": (_GUARDIAN, _ALPHA),
    "beta": (_GUARDIAN, "qsc.beta.v1.BetaService"),
    "cortex": ("qsc.cortex.v1.CortexService",),
    "ml": ("qsc.ml.v1.AnomalyService",),
}


@dataclass(frozen=True)
class Cell:
    server: str
    rpc: str
    identity: str

    @property
    def id(self) -> str:
        service, method = self.rpc.lstrip("/").rsplit("/", 1)
        return f"{self.server}:{service.rsplit('.', 1)[-1]}.{method}:{self.identity}"


CELLS: Final = tuple(
    Cell(server, rpc_path(method), identity)
    for server, services in HOSTED.items()
    for service in services
    if service in SERVICES
    for method in SERVICES[service].methods
    for identity in IDENTITIES
)


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    main: Path
    other: Path

    def server(self, role: str) -> TlsFiles:
        return self._files(self.main, f"{role}-{HOST}")

    def client(self, identity: str) -> TlsFiles | None:
        """The files `identity` dials with; None: no client certificate at all."""
        if identity == NO_CERT:
            return None
        if identity == FOREIGN_CA:
            return self._files(self.other, "operator-foreign")
        if identity == EXPIRED:
            return self._files(self.main, "operator-expired")
        return self._files(self.main, f"{identity}-{CLIENT_HOST}")

    @staticmethod
    def _files(base: Path, stem: str) -> TlsFiles:
        return TlsFiles(cert=base / f"{stem}.crt", key=base / f"{stem}.key", ca=base / "ca.crt")


def make_pki(base: Path) -> Pki:
    """A CA (backdated, so a leaf can have expired under it) with a server leaf per component, a
    client leaf per role, an expired operator leaf; a foreign CA of the same trust domain with an
    operator leaf of its own."""
    main, other = base / "main", base / "other"
    now = dt.datetime.now(dt.UTC)
    ca: CertificateAuthority = create_ca(TD, now=now - dt.timedelta(days=60))
    for role in ("alpha", "beta", "cortex", "ml"):
        write_leaf(issue_leaf(ca, role, HOST), main, ca.cert)
    for role in ROLES:
        write_leaf(issue_leaf(ca, role, CLIENT_HOST), main, ca.cert)
    expired = issue_leaf(ca, "operator", "expired", days=1, now=now - dt.timedelta(days=30))
    # Issued by the right CA for a role that may call nearly everything: expiry is its only flaw.
    expired.cert.verify_directly_issued_by(ca.cert)
    assert expired.cert.not_valid_after_utc < now
    write_leaf(expired, main, ca.cert)
    foreign = init_ca(other, TD)
    write_leaf(issue_leaf(foreign, "operator", "foreign"), other, foreign.cert)
    return Pki(main, other)


# --- the servers --------------------------------------------------------------------------------


class _Component(Protocol):
    server: ComponentServer

    async def start(self) -> int: ...
    async def stop(self) -> None: ...


class InProcess(LoopThread):
    """A component (Guardian, Cortex, MlService) built and started on its own loop thread."""

    def __init__(self, build: Any) -> None:
        super().__init__()

        async def make() -> _Component:
            component: _Component = build()
            return component

        self.component = self.run(make())
        self.port = self.run(self.component.start())

    def close(self) -> None:
        try:
            self.run(self.component.stop())
        finally:
            self.close_loop()


def alpha_guardian(pki: Pki, base: Path) -> Guardian:
    """Guardian-Alpha's gRPC surface as alpha.app assembles it, minus the eBPF and /proc workers:
    the guardian runtime (GuardianService) and the real AlphaServicer over the rules pipeline and
    the memory-scan core."""
    tls = pki.server("alpha")
    table = {
        "guardian": {"role": "alpha", "host": HOST},
        "server": {
            "listen": f"{HOST}:0",
            "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
            "shutdown_grace": "0s",
        },
        "outbox": {"directory": str(base / "outbox")},
        "stream": {"heartbeat_interval": "200ms"},
    }
    guardian = Guardian(config_from_dict(GuardianConfig, table))
    pipeline = Pipeline(RuleEngine.default(), guardian.emit_many)
    core = ScanMemoryCore(MemoryScanner(), emit=guardian.emit_many)
    guardian.add_service(AlphaServicer(pipeline, core).binding())
    return guardian


def cortex_config(pki: Pki, base: Path) -> CortexConfig:
    tls = pki.server("cortex")
    KeyManager.create(base / "keys", "cortex")
    table = {
        "server": {
            "listen": f"{HOST}:0",
            "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
            "shutdown_grace": "0s",
        },
        "store": {"directory": str(base / "store"), "synchronous": "NORMAL"},
        "keyring": {"directory": str(base / "keys")},
    }
    return config_from_dict(CortexConfig, table)


def ml_config(pki: Pki, base: Path) -> MlConfig:
    # ml_harness names the files ml-127.0.0.1.* in one directory, as `qsc pki` writes them.
    return config_from_dict(MlConfig, service_config(pki.main, train_models(base)))


BETA_TOML: Final = """
[server]
listen = "{host}:0"
shutdown_grace = "1s"

[server.tls]
cert = "{tls.cert}"
key = "{tls.key}"
ca = "{tls.ca}"

[outbox]
directory = "{base}/outbox"

[keys]
directory = "{base}/keys"
create = true

[state]
directory = "{base}/state"

[fim]
baseline = "{base}/state/fim-baseline.qsc"

[[fim.paths]]
path = "{base}/etc"

[heal]
vault_directory = "{base}/vault"
"""


class BetaProcess:
    """`python -m beta run` on 127.0.0.1:0, after `baseline init` of a one-file tree."""

    def __init__(self, pki: Pki, base: Path) -> None:
        (base / "etc").mkdir(parents=True)
        (base / "etc" / "app.conf").write_text("listen = 443\n")
        self.config = base / "beta.toml"
        self.config.write_text(BETA_TOML.format(host=HOST, tls=pki.server("beta"), base=base))
        KeyManager.create(base / "keys", "beta")
        assert beta_main(["baseline", "init", "--config", str(self.config)]) == 0
        self.port_file = base / "port"
        self.log = base / "beta.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QSC_")}
        env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'proto'}"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "beta", "run", "--config", str(self.config)),
                    *("--port-file", str(self.port_file)),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.port = 0

    def wait_ready(self) -> int:
        deadline = time.monotonic() + START_WAIT
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"qsc-beta did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return self.port

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Mesh:
    pki: Pki
    ports: dict[str, int]
    servers: dict[str, ComponentServer]  # the in-process ones
    probes: dict[str, int] = field(default_factory=dict)

    async def calls_seen(self, server: str) -> int:
        """Every call `server`'s mesh interceptor has counted (admitted or refused, any role),
        less the GetStatus probes this method made to read a process's counters."""
        if server in self.servers:
            stats = self.servers[server].policy_stats()
            by_role = (*stats.calls.values(), *stats.refused.values())
            return sum(n for by_group in by_role for n in by_group.values())
        # A process: its GetStatus reports the same counters, this very call counted among them.
        target = f"{HOST}:{self.ports[server]}"
        async with grpc.aio.secure_channel(target, credentials(self.pki, "operator")) as channel:
            reply = await guardian_service_pb2_grpc.GuardianServiceStub(channel).GetStatus(
                guardian_service_pb2.GetStatusRequest(), timeout=UNARY_DEADLINE
            )
        self.probes[server] = self.probes.get(server, 0) + 1
        return sum(row.calls + row.refused for row in reply.transport.counts) - self.probes[server]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("authz-matrix")
    pki = make_pki(base / "pki")
    beta = BetaProcess(pki, base / "beta")  # starts while the in-process servers do
    threads: dict[str, InProcess] = {}
    try:
        threads["alpha"] = InProcess(lambda: alpha_guardian(pki, base / "alpha"))
        cortex = cortex_config(pki, base / "cortex")
        threads["cortex"] = InProcess(lambda: Cortex(cortex))
        ml = ml_config(pki, base / "ml")
        threads["ml"] = InProcess(lambda: MlService(ml))
        ports = {name: thread.port for name, thread in threads.items()}
        ports["beta"] = beta.wait_ready()
        servers = {name: thread.component.server for name, thread in threads.items()}
        yield Mesh(pki, ports, servers)
    finally:
        beta.close()
        for thread in threads.values():
            thread.close()


# --- calling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


def credentials(pki: Pki, identity: str) -> grpc.ChannelCredentials:
    ca = (pki.main / "ca.crt").read_bytes()  # the client always trusts the servers' CA
    files = pki.client(identity)
    if files is None:
        return grpc.ssl_channel_credentials(ca)
    return grpc.ssl_channel_credentials(ca, files.key.read_bytes(), files.cert.read_bytes())


def request_for(rpc: str, pki: Pki, identity: str) -> bytes:
    """The request each cell sends: the method's input message, empty but for two methods."""
    method = METHODS[rpc]
    request = message_factory.GetMessageClass(method.input_type)()
    if isinstance(request, alpha_service_pb2.ScanMemoryRequest):
        request.pids.append(2**31)  # beyond pid_max: INVALID_ARGUMENT at once, nothing scanned
        request.skip_events = True
    elif isinstance(request, guardian_service_pb2.SubscribeRequest) and identity in ROLES:
        files = pki.client(identity)
        assert files is not None
        _, offer = SubscriberHandshake.start(
            signing_key(load_tls(files)), context=subscribe_context(request)
        )
        request.sealed_session.CopyFrom(offer)
    data: bytes = request.SerializeToString()
    return data


async def call(channel: grpc.aio.Channel, rpc: str, request: bytes) -> Outcome:
    """One call; a stream is read until its first message (or end, or deadline), then cancelled."""
    try:
        if METHODS[rpc].server_streaming:
            stream = channel.unary_stream(rpc, None, None)(request, timeout=STREAM_WINDOW)
            try:
                async for _ in stream:
                    break
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(rpc, None, None)(request, timeout=UNARY_DEADLINE)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK, "")


@dataclass(frozen=True)
class Results:
    outcomes: Mapping[Cell, Outcome]
    # Calls each server's interceptor counted while only the refused identities were calling,
    # and then while only the roles were (one per cell: the counters see every call they get).
    seen_while_refused: Mapping[str, int]
    seen_while_roles_called: Mapping[str, int]


async def run_matrix(mesh: Mesh) -> Results:
    channels: dict[tuple[str, str], grpc.aio.Channel] = {}
    opened: list[grpc.aio.Channel] = []

    def channel_for(cell: Cell) -> grpc.aio.Channel:
        target = f"{HOST}:{mesh.ports[cell.server]}"
        creds = credentials(mesh.pki, cell.identity)
        if cell.identity in BAD_IDENTITIES:  # a handshake of its own for every refused cell
            opened.append(grpc.aio.secure_channel(target, creds))
            return opened[-1]
        key = (cell.server, cell.identity)
        if key not in channels:
            channels[key] = grpc.aio.secure_channel(target, creds)
            opened.append(channels[key])
        return channels[key]

    async def phase(cells: list[Cell]) -> dict[Cell, Outcome]:
        calls = [
            call(channel_for(c), c.rpc, request_for(c.rpc, mesh.pki, c.identity)) for c in cells
        ]
        return dict(zip(cells, await asyncio.gather(*calls), strict=True))

    try:
        # The refused identities alone first, so the servers' counters can show nothing got in.
        before = {server: await mesh.calls_seen(server) for server in HOSTED}
        got = await phase([c for c in CELLS if c.identity in BAD_IDENTITIES])
        middle = {server: await mesh.calls_seen(server) for server in HOSTED}
        got.update(await phase([c for c in CELLS if c.identity not in BAD_IDENTITIES]))
        after = {server: await mesh.calls_seen(server) for server in HOSTED}
        return Results(
            got,
            {server: middle[server] - before[server] for server in HOSTED},
            {server: after[server] - middle[server] for server in HOSTED},
        )
    finally:
        await asyncio.gather(*(ch.close(None) for ch in opened))


@pytest.fixture(scope="module")
def results(mesh: Mesh) -> Results:
    started = time.monotonic()
    got = asyncio.run(run_matrix(mesh))
    print(f"authz matrix: {len(got.outcomes)} calls in {time.monotonic() - started:.2f}s")
    tally = Counter(
        (expectation(cell), outcome.code.name) for cell, outcome in got.outcomes.items()
    )
    for (expected, code), n in sorted(tally.items()):
        print(f"  {expected:>8} -> {code}: {n}")
    return got


def expectation(cell: Cell) -> str:
    """What the table says of one cell: refused (bad identity), allowed or denied."""
    if cell.identity in BAD_IDENTITIES:
        return "refused"
    return "allowed" if MESH_AUTHZ.allows(cell.rpc, cell.identity) else "denied"


# --- the table against the descriptors ----------------------------------------------------------


def test_every_descriptor_rpc_has_an_authz_entry_and_every_entry_an_rpc() -> None:
    assert SERVICES, "no qsc services found in the generated code"
    missing = sorted(set(METHODS) - set(MESH_AUTHZ.rules))
    stale = sorted(set(MESH_AUTHZ.rules) - set(METHODS))
    assert (missing, stale) == ([], []), (
        f"RPCs with no entry in mesh.authz.MESH_AUTHZ (denied to every role): {missing}; "
        f"entries naming no RPC of the generated code: {stale}"
    )


def test_every_service_is_hosted_as_reflection_says(mesh: Mesh) -> None:
    unhosted = sorted(set(SERVICES) - {s for services in HOSTED.values() for s in services})
    assert not unhosted, f"services no server of the matrix hosts: {unhosted}"

    async def listed(port: int) -> set[str]:
        creds = credentials(mesh.pki, "operator")
        async with grpc.aio.secure_channel(f"{HOST}:{port}", creds) as channel:
            info = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [r async for r in info(iter([request]), timeout=UNARY_DEADLINE)]
        return {s.name for r in replies for s in r.list_services_response.service}

    for server, services in HOSTED.items():
        qsc_services = {s for s in asyncio.run(listed(mesh.ports[server])) if s.startswith("qsc.")}
        assert qsc_services == set(services), server


# --- the matrix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_matrix(results: Results, cell: Cell) -> None:
    got = results.outcomes[cell]
    expected = expectation(cell)
    if expected == "refused":
        # Refused by the TLS handshake: TLS 1.3 lets the client finish its side before the
        # server checks the certificate, so grpcio sees the server close the connection
        # ("failed to connect ... Socket closed"); UNAUTHENTICATED would be a refused call.
        if got.code == grpc.StatusCode.UNAVAILABLE:
            assert got.details.startswith("failed to connect to all addresses"), got
        else:
            assert got.code == grpc.StatusCode.UNAUTHENTICATED, got
        # ... and no call of any of them reached the server's interceptor.
        assert results.seen_while_refused[cell.server] == 0
    elif expected == "allowed":
        assert got.code not in NOT_ADMITTED, f"{cell.identity} may call {cell.rpc}, got {got}"
    else:
        assert got == Outcome(
            grpc.StatusCode.PERMISSION_DENIED, f"role {cell.identity} may not call {cell.rpc}"
        )


def test_the_servers_counted_every_call_of_the_roles(results: Results) -> None:
    """What makes `seen_while_refused == 0` mean something: the same counters saw each role's
    call, admitted or denied, exactly once."""
    expected = {s: sum(1 for c in CELLS if c.server == s and c.identity in ROLES) for s in HOSTED}
    assert results.seen_while_roles_called == expected


def test_the_matrix_covers_every_rpc_and_identity() -> None:
    assert {c.rpc for c in CELLS} == set(METHODS)
    assert {c.identity for c in CELLS} == set(IDENTITIES)
    allowed = sum(1 for c in CELLS if c.identity in ROLES and MESH_AUTHZ.allows(c.rpc, c.identity))
    denied = sum(
        1 for c in CELLS if c.identity in ROLES and not MESH_AUTHZ.allows(c.rpc, c.identity)
    )
    assert allowed
    assert denied


# --- classical key exchange ---------------------------------------------------------------------

POLICY: Final = PqPolicy()


def _first_unary(server: str, service: str, mode: PqMode) -> Cell | None:
    """The first unary RPC of `service` on `server` that a role of `mode` may call, as that role."""
    for method in SERVICES[service].methods:
        if method.server_streaming:
            continue
        for role in ROLES:
            if POLICY.mode(role) is mode and MESH_AUTHZ.allows(rpc_path(method), role):
                return Cell(server, rpc_path(method), role)
    return None


# Per hosted service: a role the policy requires PQ of, and one it only prefers PQ of.
CLASSICAL_CASES: Final = [
    (cell, mode)
    for server, services in HOSTED.items()
    for service in services
    for mode in (PqMode.REQUIRE, PqMode.PREFER)
    if (cell := _first_unary(server, service, mode)) is not None
]


@pytest.mark.parametrize(
    ("cell", "mode"), CLASSICAL_CASES, ids=[f"{c.id}:{m.value}" for c, m in CLASSICAL_CASES]
)
def test_over_a_classical_handshake_require_roles_are_refused_and_prefer_roles_admitted(
    mesh: Mesh, cell: Cell, mode: PqMode
) -> None:
    files = mesh.pki.client(cell.identity)
    assert files is not None

    async def through_relay() -> tuple[Outcome, int]:
        # Both legs of the relay are Python's OpenSSL: classical X25519 whatever grpcio offers.
        relay = TlsRelay(mesh.pki.server("alpha"), files, mesh.ports[cell.server])
        port = await relay.start()
        creds = credentials(mesh.pki, cell.identity)
        try:
            async with grpc.aio.secure_channel(f"{HOST}:{port}", creds) as channel:
                request = request_for(cell.rpc, mesh.pki, cell.identity)
                return await call(channel, cell.rpc, request), relay.connections
        finally:
            await relay.stop()

    got, connections = asyncio.run(through_relay())
    assert connections >= 1
    if mode is PqMode.REQUIRE:
        assert got.code == grpc.StatusCode.UNAUTHENTICATED, got
        assert CLASSICAL_REFUSAL in got.details, got
    else:
        assert got.code not in NOT_ADMITTED, got
