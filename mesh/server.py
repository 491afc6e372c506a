"""The one way to build and run a component's gRPC server (grpc.aio).

    server = ComponentServer(config, component="alpha",
                             services=[ServiceBinding(NAME, add_fn, servicer)])
    port = await server.start()
    await server.wait_for_termination()     # or: await server.run() to also handle SIGTERM

Every server: mutual TLS with client certificates required; the mesh interceptor on every call
(`mesh.interceptors`); `grpc.health.v1.Health` with an overall ("") and a per-service status;
v1alpha server reflection; message size limits both ways; a graceful stop that marks health
NOT_SERVING, sets `draining` (streaming servicers watch it and end their streams cleanly), stops
accepting calls and gives running ones a bounded grace before cancelling them.

TLS 1.3 only, at the handshake: grpcio's Python API cannot set a minimum TLS version, so
`mesh.grpc_env` leaves TLS 1.2 without a usable cipher suite before grpc loads (a TLS 1.2
ClientHello fails with no shared cipher, before any certificate is sent); the interceptor's
per-call check stays as the second line. The key-exchange group cannot be restricted in grpcio
(no groups/curves setting reaches BoringSSL), so a classical handshake completes and `require`
refuses its calls; mesh clients (`mesh.channel`) check the group before they send anything.

Unauthenticated peers are bounded by grpc core: `max_connections` per listener, and a connection
that has not finished its TLS handshake within `handshake_timeout` is closed. grpcio offers no
per-source-address cap nor any hook on a failed handshake (no peer address reaches Python):
per-source caps belong to the host firewall (`deploy/nftables-qsc.nft`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from crypto.pki import ROLES, Identity
from mesh import grpc_env
from mesh.authz import HEALTH_SERVICE, MESH_AUTHZ, REFLECTION_SERVICE, AuthzTable, service_methods
from mesh.errors import ConfigError, IdentityError, NotFoundError
from mesh.identity import TlsFiles, TlsMaterial, load_tls, peer_identity
from mesh.interceptors import MeshInterceptor
from mesh.logs import log_event
from mesh.policy import PolicyCounters, PolicyStats, PqPolicy, transport_status
from qsc.common.v1 import transport_status_pb2

MiB: Final = 1024 * 1024
MAX_MESSAGE_LIMIT: Final = 2**31 - 1  # grpc's limits are C ints
MAX_GRACE: Final = timedelta(hours=1)
MAX_CONNECTIONS: Final = 1_000_000
MIN_HANDSHAKE: Final = timedelta(milliseconds=100)
MAX_HANDSHAKE: Final = timedelta(minutes=2)

_log = logging.getLogger("qsc.mesh.server")


@dataclass(frozen=True)
class ServerConfig:
    """How to run one component server. Invalid values raise ConfigError naming the field."""

    tls: TlsFiles
    listen: str = "127.0.0.1:0"
    max_message_bytes: int = 4 * MiB
    max_streams_per_peer: int = 16
    # Health/Watch streams count apart, so a monitor never takes a Subscribe slot (and back).
    max_health_watches_per_peer: int = 4
    shutdown_grace: timedelta = timedelta(seconds=10)
    pq_policy: PqPolicy = field(default_factory=PqPolicy)
    # Bounds on peers that never authenticate: open connections per listener (grpc core closes
    # any beyond it at accept), and the time a connection has to complete its TLS handshake.
    max_connections: int = 1024
    handshake_timeout: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError("listen", f"{self.listen!r} is not HOST:PORT (PORT 0 picks one)")
        if not 1 <= self.max_message_bytes <= MAX_MESSAGE_LIMIT:
            raise ConfigError("max_message_bytes", f"must be 1..{MAX_MESSAGE_LIMIT}")
        if self.max_streams_per_peer < 1:
            raise ConfigError("max_streams_per_peer", "must be at least 1")
        if self.max_health_watches_per_peer < 1:
            raise ConfigError("max_health_watches_per_peer", "must be at least 1")
        if not timedelta(0) <= self.shutdown_grace <= MAX_GRACE:
            raise ConfigError("shutdown_grace", f"must be between 0 and {MAX_GRACE}")
        if not 1 <= self.max_connections <= MAX_CONNECTIONS:
            raise ConfigError("max_connections", f"must be 1..{MAX_CONNECTIONS}")
        if not MIN_HANDSHAKE <= self.handshake_timeout <= MAX_HANDSHAKE:
            raise ConfigError(
                "handshake_timeout", f"must be between {MIN_HANDSHAKE} and {MAX_HANDSHAKE}"
            )


@dataclass(frozen=True)
class ServiceBinding:
    """One service to serve: its full name, the generated `add_*_to_server` and the servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: object


class ComponentServer:
    """A running (or ready to run) component server; see the module docstring."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        component: str,
        services: Sequence[ServiceBinding] = (),
        authz: AuthzTable | Mapping[str, Iterable[str]] = MESH_AUTHZ,
    ) -> None:
        if component not in ROLES:
            raise ConfigError("component", f"unknown component {component!r}")
        self.config = config
        self.component = component
        self.authz = authz if isinstance(authz, AuthzTable) else AuthzTable.of(authz)
        self.services: list[ServiceBinding] = []
        # Servicers may hold on to this before start(): set when shutdown begins.
        self.draining = asyncio.Event()
        self._counters = PolicyCounters()
        self._health = _Health()
        self._server: grpc.aio.Server | None = None
        self._tls: TlsMaterial | None = None
        self._interceptor: MeshInterceptor | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._port = 0
        for binding in services:
            self.add_service(binding)

    def add_service(self, binding: ServiceBinding) -> None:
        """Serve one more service (before start); lets a servicer be built with `draining`."""
        if self._server is not None:
            raise RuntimeError("add services before start()")
        service_methods(binding.name)  # fails now on a misspelt service name
        self.services.append(binding)

    @property
    def port(self) -> int:
        return self._port

    @property
    def identity(self) -> Identity:
        if self._tls is None:
            raise IdentityError("the server has not loaded its identity yet; call start()")
        return self._tls.identity

    @staticmethod
    def peer_identity(context: object) -> Identity:
        """The authenticated identity of the peer of the call being served (for servicers)."""
        return peer_identity(context)

    def policy_stats(self) -> PolicyStats:
        return self._counters.snapshot()

    def transport_status(self) -> transport_status_pb2.TransportStatus:
        """The counters as GetStatus reports them (`transport`), judged by this server's policy."""
        return transport_status(self._counters.snapshot(), self.config.pq_policy)

    def open_streams(self) -> dict[str, int]:
        """Streaming calls open now, per peer SPIFFE ID."""
        return self._interceptor.open_streams() if self._interceptor else {}

    async def start(self) -> int:
        """Load the identity, bind, start serving; return the bound port."""
        if self._server is not None:
            raise RuntimeError("server already started")
        tls = load_tls(self.config.tls)
        if tls.identity.role != self.component:
            raise IdentityError(
                f"certificate {self.config.tls.cert} names role {tls.identity.role}, but this is "
                f"the {self.component} component; issue it with `qsc pki issue {self.component} "
                "HOST`"
            )
        self._tls = tls
        self._interceptor = MeshInterceptor(
            trust_domain=tls.trust_domain,
            policy=self.config.pq_policy,
            authz=self.authz,
            counters=self._counters,
            max_streams_per_peer=self.config.max_streams_per_peer,
            max_health_watches_per_peer=self.config.max_health_watches_per_peer,
        )
        if not grpc_env.HANDSHAKE_FLOOR:
            log_event(
                _log,
                "grpc was loaded before mesh: TLS 1.2 handshakes complete and are refused per "
                "call only; import mesh (or a component package) before grpc",
                level=logging.WARNING,
            )
        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            interceptors=[self._interceptor],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Two servers silently sharing a fixed port would split the traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_allowed_incoming_connections", self.config.max_connections),
                (
                    "grpc.server_handshake_timeout_ms",
                    max(1, self.config.handshake_timeout // timedelta(milliseconds=1)),
                ),
            ],
        )
        names = [binding.name for binding in self.services]
        for binding in self.services:
            binding.add_to_server(binding.servicer, server)
            self._warn_unreachable(binding.name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*names, HEALTH_SERVICE, REFLECTION_SERVICE], server)
        credentials = grpc.ssl_server_credentials(
            [(tls.private_key, tls.cert_chain)],
            root_certificates=tls.root_certificates,
            require_client_auth=True,
        )
        try:
            port = server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as exc:
            raise ConfigError("listen", f"cannot bind {self.config.listen}: {exc}") from None
        if port == 0:
            raise ConfigError("listen", f"cannot bind {self.config.listen}")
        for name in names:
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        self._server, self._port = server, port
        log_event(
            _log,
            "serving",
            component=self.component,
            services=names,
            port=port,
            identity=tls.identity.spiffe_id,
        )
        return port

    def set_serving(self, service: str, serving: bool) -> None:
        """Report one service (or "" for the whole server) healthy or not."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._health.set(service, status)

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (main thread only, like every signal handler)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    async def stop(self, grace: timedelta | None = None) -> None:
        """Graceful stop; idempotent. `grace` defaults to the configured shutdown grace."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stop_task)

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped (after `stop()` or a handled signal)."""
        await self._stopped.wait()

    async def run(self) -> None:
        """start(), stop on SIGTERM/SIGINT, and return once stopped."""
        if self._server is None:
            await self.start()
        self.install_signal_handlers()
        await self.wait_for_termination()

    # --- internals ----------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        log_event(
            _log,
            "signal received, draining",
            signal=signal.Signals(signum).name,
            grace_s=self.config.shutdown_grace.total_seconds(),
        )
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(None))

    async def _stop(self, grace: timedelta | None) -> None:
        seconds = (grace if grace is not None else self.config.shutdown_grace).total_seconds()
        self._health.enter_shutdown()
        self.draining.set()
        if self._server is not None:
            # Refuses new calls at once; running ones get `seconds`, then are cancelled.
            await self._server.stop(seconds)
        log_event(_log, "stopped", component=self.component)
        self._stopped.set()

    def _warn_unreachable(self, service: str) -> None:
        nobody = [m for m in service_methods(service) if not self.authz.roles_for(m)]
        if nobody:
            log_event(
                _log,
                "no role may call these (not in the authz table)",
                level=logging.WARNING,
                rpcs=nobody,
            )


class _Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 whose Watch streams end once shutdown has been announced.

    grpcio's own async servicer keeps Watch open forever, which would hold every graceful stop
    for its whole grace; here a watcher gets NOT_SERVING and then the stream ends (OK).
    """

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {
            "": health_pb2.HealthCheckResponse.SERVING
        }
        self._changed = asyncio.Event()
        self._final = False

    def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        if self._final:
            return
        self._status[service] = status
        self._wake()

    def enter_shutdown(self) -> None:
        for service in self._status:
            self._status[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        self._final = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def Check(  # noqa: N802 (grpc method name)
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            raise NotFoundError(f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(  # noqa: N802 (grpc method name)
        self, request: health_pb2.HealthListRequest, context: object
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._status.items()
            }
        )

    async def Watch(  # noqa: N802 (grpc method name)
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: health_pb2.HealthCheckResponse.ServingStatus | None = None
        while True:
            changed = self._changed
            status = self._status.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._final:
                return
            await changed.wait()
