"""`qsc doctor --config F`: is this host's component ready to run, and what to fix if not.

It reads the component's configuration the way the component does (the component is the role
of the certificate in `[server.tls]`), then checks: the certificate (role, host, expiry, chain
to the CA, the key it pairs with and that key's mode), the keyring's modes, the clock, and each
peer the component dials (the Cortex's guardians and ML service; a guardian's own listener when
it runs): reachable, the certificate it shows (role and host), and the key exchange group the
mesh handshake negotiates. Every problem is printed with what to do; exit status 1 if any check
failed, 0 otherwise (warnings included).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crypto import pki
from crypto.errors import PkiError
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles
from mesh.errors import ConfigError, IdentityError, MeshError
from mesh.identity import load_tls
from mesh.interceptors import KEX_GROUP_HEADER, TLS_VERSION_HEADER
from mesh.policy import PqPolicy

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[Any]

# The loader of each component's configuration, imported only when needed: a host has only
# the components it runs installed.
LOADERS: Final = {
    "alpha": ("alpha.config", "load_alpha_config"),
    "beta": ("beta.config", "load_beta_config"),
    "cortex": ("cortex.config", "load_cortex_config"),
    "ml": ("ml.config", "load_ml_config"),
}
EXPIRY_WARN_DAYS: Final = 30
PEER_TIMEOUT: Final = 5.0


@dataclass
class Report:
    """Checks as they are made: printed at once, counted for the exit status."""

    failures: int = 0
    warnings: int = 0
    lines: list[str] = field(default_factory=list)

    def _say(self, mark: str, text: str, fix: str = "") -> None:
        line = f"{mark:<5} {text}" + (f"\n      fix: {fix}" if fix else "")
        self.lines.append(line)
        print(line, flush=True)

    def ok(self, text: str) -> None:
        self._say("ok", text)

    def warn(self, text: str, fix: str = "") -> None:
        self.warnings += 1
        self._say("WARN", text, fix)

    def fail(self, text: str, fix: str = "") -> None:
        self.failures += 1
        self._say("FAIL", text, fix)


# --- the pieces ---------------------------------------------------------------------------------


def _tls_table(path: Path) -> TlsFiles | None:
    try:
        doc = tomllib.loads(path.read_text())
        tls = doc["server"]["tls"]
        return TlsFiles(cert=Path(tls["cert"]), key=Path(tls["key"]), ca=Path(tls["ca"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ConfigError):
        return None


def check_identity(report: Report, tls: TlsFiles, component: str | None) -> pki.Identity | None:
    """The certificate, its chain, its key and the key's mode; the identity when usable."""
    try:
        material = load_tls(tls)
    except IdentityError as exc:
        report.fail(f"identity: {exc}", _identity_fix(str(exc)))
        return None
    ident = material.identity
    report.ok(f"certificate {tls.cert}: {ident.spiffe_id}, chains to {tls.ca}")
    if component is not None and ident.role != component:
        report.fail(
            f"certificate role is {ident.role!r}, this configuration is a {component}'s",
            f"qsc pki issue {component} {ident.host} --dir CA_DIR, and point [server.tls] at it",
        )
    info = pki.describe(pki.load_certificate(tls.cert))
    if info.expired:
        report.fail(
            f"certificate expired on {info.not_after:%Y-%m-%d}",
            f"qsc pki issue {ident.role} {ident.host} --dir CA_DIR",
        )
    elif info.days_left < EXPIRY_WARN_DAYS:
        report.warn(
            f"certificate expires in {info.days_left} days ({info.not_after:%Y-%m-%d})",
            f"issue a new one now: qsc pki issue {ident.role} {ident.host} --dir CA_DIR",
        )
    else:
        report.ok(f"certificate valid for {info.days_left} more days")
    report.ok(f"key {tls.key}: pairs with the certificate, mode {_mode(tls.key)}")
    return ident


def _identity_fix(message: str) -> str:
    if "mode" in message or "permission bits" in message:
        return "chmod 600 the key file (and chown it to the user the component runs as)"
    if "no such file" in message:
        return "check the paths in [server.tls], or issue the files with `qsc pki issue`"
    if "does not match" in message or "pair" in message:
        return "the key is not the certificate's: copy both from the same `qsc pki issue`"
    return "re-issue the certificate from this deployment's CA: qsc pki issue ROLE HOST"


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


def check_private_tree(report: Report, what: str, directory: Path) -> None:
    """A key directory: 0700 or stricter, every file 0600 or stricter, nobody else's."""
    if not directory.exists():
        report.warn(f"{what} {directory}: does not exist yet", "create it with `qsc keys init`")
        return
    bad = []
    for path in [directory, *_walk(directory)]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            bad.append(f"{path} {mode:04o}")
    if bad:
        report.fail(
            f"{what} {directory}: readable or writable by others: {', '.join(bad[:5])}",
            f"chmod -R go-rwx {directory}",
        )
    else:
        report.ok(f"{what} {directory}: private (no group or other permissions)")


def _walk(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            yield Path(root) / name


def check_clock(report: Report, cert: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    try:
        info = pki.describe(pki.load_certificate(cert))
    except (OSError, ValueError, PkiError):
        info = None
    if info is not None and info.not_before > now:
        report.fail(
            f"clock: now is {now:%Y-%m-%d %H:%M} UTC, before the certificate's start "
            f"{info.not_before:%Y-%m-%d %H:%M}: the clock is behind",
            "set the time (systemctl enable --now systemd-timesyncd, or chrony)",
        )
        return
    timedatectl = shutil.which("timedatectl")
    synced = ""
    if timedatectl:
        done = subprocess.run(
            [timedatectl, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        synced = done.stdout.strip() if done.returncode == 0 else ""
    if synced == "yes":
        report.ok(f"clock: {now:%Y-%m-%d %H:%M:%S} UTC, synchronized (NTP)")
    else:
        why = "not synchronized" if synced == "no" else "synchronization unknown here"
        report.warn(
            f"clock: {now:%Y-%m-%d %H:%M:%S} UTC, {why}: certificates and event times rely on it",
            "run an NTP client (systemd-timesyncd or chrony)",
        )


@dataclass(frozen=True)
class Peer:
    what: str  # e.g. "guardian alpha-web1"
    address: str  # HOST:PORT
    role: str | None  # the role its certificate must have (None: not checked)
    host: str | None
    server_name: str | None = None
    optional: bool = False  # our own listener: not running is a warning


def _peer_certificate(peer: Peer, tls: TlsFiles) -> x509.Certificate:
    """The peer's certificate from a TLS handshake (classical: the Python ssl module cannot
    offer ML-KEM; the mesh handshake below can)."""
    host, port = peer.address.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.check_hostname = False  # the mesh checks names; here the SPIFFE identity counts
    with (
        socket.create_connection((host.strip("[]"), int(port)), timeout=PEER_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=peer.server_name or host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("no certificate")
    return x509.load_der_x509_certificate(der)


async def _negotiated(peer: Peer, tls: TlsFiles) -> tuple[str, str]:
    """(TLS version, key exchange group) of a mesh Health/Check to the peer."""
    config = ChannelConfig(
        target=peer.address,
        tls=tls,
        server_name_override=peer.server_name,
        default_timeout=dt.timedelta(seconds=PEER_TIMEOUT),
    )
    async with open_channel(config) as channel:
        call = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=PEER_TIMEOUT
        )
        await call
        trailing = dict(await call.trailing_metadata() or ())
    return str(trailing.get(TLS_VERSION_HEADER, "?")), str(trailing.get(KEX_GROUP_HEADER, "?"))


def check_peer(report: Report, peer: Peer, tls: TlsFiles) -> None:
    try:
        cert = _peer_certificate(peer, tls)
    except ConnectionRefusedError:
        text = f"{peer.what} {peer.address}: nothing listens there (connection refused)"
        if peer.optional:
            report.warn(text, "start the component, or ignore this if it is not meant to run")
        else:
            report.fail(text, "start it, or fix the address in the configuration")
        return
    except TimeoutError:
        report.fail(
            f"{peer.what} {peer.address}: no answer within {PEER_TIMEOUT:.0f}s",
            "check the address, routes and firewalls between the hosts",
        )
        return
    except ssl.SSLError as exc:
        report.fail(
            f"{peer.what} {peer.address}: TLS handshake failed ({exc.reason or exc})",
            "both sides need certificates from the same deployment CA",
        )
        return
    except OSError as exc:
        report.fail(
            f"{peer.what} {peer.address}: {exc.strerror or exc}",
            "check the address in the configuration",
        )
        return
    try:
        ident = pki.parse_identity(cert)
    except PkiError as exc:
        report.fail(f"{peer.what} {peer.address}: its certificate names no QSC identity ({exc})")
        return
    wrong = [
        f"{name} {got!r}, expected {want!r}"
        for name, got, want in (("role", ident.role, peer.role), ("host", ident.host, peer.host))
        if want is not None and got != want
    ]
    if wrong:
        report.fail(
            f"{peer.what} {peer.address}: certificate {ident.spiffe_id}: {'; '.join(wrong)}",
            "point the entry at the right address, or fix its role/host to match the peer",
        )
        return
    try:
        version, group = asyncio.run(_negotiated(peer, tls))
    except (MeshError, OSError) as exc:
        report.fail(f"{peer.what} {peer.address}: mesh handshake refused: {exc}")
        return
    except grpc.RpcError as exc:  # the server's (or the transport guard's) reason
        details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        report.fail(
            f"{peer.what} {peer.address}: mesh call failed: {details}",
            "see the peer's log for the refusal",
        )
        return
    kind = "hybrid post-quantum" if PqPolicy().is_hybrid(group) else "classical"
    report.ok(
        f"{peer.what} {peer.address}: {ident.spiffe_id}, {version}, key exchange {group} ({kind})"
    )


def peers_of(component: str, config: Any) -> list[Peer]:
    """Whom this component dials, and its own listener (a warning when it is not running)."""
    peers: list[Peer] = []
    if component == "cortex":
        for g in config.guardians:
            peers.append(Peer(f"guardian {g.id}", g.address, g.role, g.host, g.server_name))
        if config.ml.address:
            peers.append(Peer("ML service", config.ml.address, "ml", None, config.ml.server_name))
    listen = config.server.listen
    if not listen.endswith(":0"):
        host = listen.rsplit(":", 1)[0]
        # A wildcard listener is dialled on loopback.
        dial = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]"}.get(host, host)  # noqa: S104 - maps a wildcard listen address to loopback, binds nothing
        port = listen.rsplit(":", 1)[1]
        peers.append(Peer("own listener", f"{dial}:{port}", component, None, optional=True))
    return peers


# Where each component keeps private key material: (section, attribute).
_KEY_DIRECTORIES: Final = (("keyring", "directory"), ("keys", "directory"), ("model", "keyring"))


def _key_directories(config: Any) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for section, attribute in _KEY_DIRECTORIES:
        value = getattr(getattr(config, section, None), attribute, None)
        if value:
            found.append((f"[{section}] {attribute}", Path(value)))
    return found


def _load(component: str, path: Path) -> tuple[Any | None, str]:
    module_name, function = LOADERS[component]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"the {component} component is not installed here ({exc.name} missing)"
    loader: Callable[[Path], Any] = getattr(module, function)
    try:
        return loader(path), ""
    except (ConfigError, OSError, ValueError) as exc:
        return None, str(exc)


def doctor(path: Path) -> Report:
    report = Report()
    if not path.is_file():
        report.fail(f"configuration {path}: no such file", "pass the component's TOML file")
        return report
    tls = _tls_table(path)
    if tls is None:
        report.fail(
            f"configuration {path}: no [server.tls] cert, key and ca",
            "every component names its identity files in [server.tls]",
        )
        return report
    ident = check_identity(report, tls, None)
    component = ident.role if ident is not None else None
    if component not in LOADERS:
        if ident is not None:
            report.fail(f"role {component!r} runs no component (alpha, beta, cortex or ml)")
        return report
    config, error = _load(component, path)
    if config is None:
        report.fail(f"configuration {path}: {error}", "fix the setting named above")
        return report
    report.ok(f"configuration {path}: a valid {component} configuration")
    for what, directory in _key_directories(config):
        check_private_tree(report, what, directory)
    check_clock(report, tls.cert)
    for peer in peers_of(component, config):
        check_peer(report, peer, tls)
    return report


# --- the command ----------------------------------------------------------------------------------


def register(groups: SubParsers) -> None:
    parser = groups.add_parser(
        "doctor",
        help="check a host's component: config, certificate, keys, clock, peers",
        description=__doc__.splitlines()[0],
        epilog="example:\n  qsc doctor --config /etc/qsc/cortex.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="the component's TOML file")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    report = doctor(args.config)
    verdict = "ready" if not report.failures else "not ready"
    print(f"\n{verdict}: {report.failures} failed, {report.warnings} warning(s)")
    return 1 if report.failures else 0
