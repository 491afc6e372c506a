"""Guardian-Beta end to end: the real `python -m beta run` process on temporary trees, with
certificates from `qsc pki`, a keyring from `qsc keys init`, a baseline from `qsc-beta baseline
init` and manifests from `qsc-beta manifest create`, observed only through its API: a SEALED
Subscribe as `cortex` and BetaService calls over mTLS.

Covered: content, permission, owner, xattr and symlink tampering; ScanIntegrity's stream;
backup sets damaged by a bit flip, truncation, deletion and an extra file (scheduled and
on-demand verification); an expiring and a revoked certificate (a real OCSP responder built
with `cryptography` on 127.0.0.1); healing under `approve` (proposal, ListHealProposals,
ApproveHeal as operator, RejectHeal) and `auto` (a validator that accepts, one that refuses);
SIGTERM exiting 0; and restarts over a replayed (older, validly sealed) and an edited baseline.

One Beta process serves the module; the last test restarts it, so the tests run in file order.
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from beta.__main__ import main as beta_main
from mesh.cli import main as qsc_main
from mesh.stream.batching import subscribe_context
from mesh.stream.sealing import SubscriberHandshake
from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.beta.v1 import beta_service_pb2_grpc as bpb_grpc
from qsc.common.v1 import certificate_details_pb2 as cpb
from qsc.common.v1 import event_pb2, pipeline_details_pb2
from qsc.common.v1 import heal_details_pb2 as hpb
from qsc.common.v1 import integrity_details_pb2 as ipb
from qsc.guardian.v1 import guardian_service_pb2 as gpb
from qsc.guardian.v1 import guardian_service_pb2_grpc as gpb_grpc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owner changes need root")

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TIMEOUT = 20.0
DAY = dt.timedelta(days=1)
R_co = TypeVar("R_co", covariant=True)


class _Stream(Protocol[R_co]):
    """A grpcio response stream (grpc-stubs types it too loosely for `next`)."""

    def __iter__(self) -> Iterator[R_co]: ...
    def __next__(self) -> R_co: ...
    def cancel(self) -> bool: ...


# --- the watched certificates and their OCSP responder --------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CertWorld:
    """A CA, a certificate expiring in 5 days, one revoked (per the responder), one fine."""

    def __init__(self, directory: Path, ocsp_url: str) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name("Beta E2E CA"))
            .issuer_name(_name("Beta E2E CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.revoked_serials: set[int] = set()
        self.directory = directory
        self.trust_store = directory / "ca.pem"
        self.trust_store.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        self.expiring = self._leaf("expiring.example", now + 5 * DAY, ocsp_url)
        self.revoked = self._leaf("revoked.example", now + 90 * DAY, ocsp_url, revoked=True)
        self.fine = self._leaf("fine.example", now + 90 * DAY, ocsp_url)
        self.leaves = (self.expiring, self.revoked, self.fine)

    def _leaf(self, cn: str, not_after: dt.datetime, url: str, *, revoked: bool = False) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - DAY)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url)
                        )
                    ]
                ),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        if revoked:
            self.revoked_serials.add(cert.serial_number)
        path = self.directory / f"{cn}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def answer(self, request: ocsp.OCSPRequest) -> bytes:
        """A signed, fresh answer echoing the nonce: REVOKED for the revoked serial."""
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        now = _now()
        revoked = request.serial_number in self.revoked_serials
        # The answer names the certificate by CertID: build it from the one asked about.
        (cert,) = [
            c
            for c in (x509.load_pem_x509_certificate(p.read_bytes()) for p in self.leaves)
            if c.serial_number == request.serial_number
        ]
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=self.ca,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
                this_update=now - dt.timedelta(minutes=1),
                next_update=now + dt.timedelta(hours=1),
                revocation_time=now - DAY if revoked else None,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
            )
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca)
        )
        return builder.sign(self.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class _Responder(http.server.BaseHTTPRequestHandler):
    world: CertWorld

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = self.world.answer(ocsp.load_der_ocsp_request(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/ocsp-response")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


# --- the world Beta watches -----------------------------------------------------------------


class World:
    """Every file and directory of one Beta deployment, made with the real tools."""

    def __init__(self, base: Path, ocsp_url: str) -> None:
        self.base = base
        self.pki = base / "pki"
        assert qsc_main(["pki", "init", "--dir", str(self.pki), "--trust-domain", "e2e.test"]) == 0
        for role, host in [("beta", HOST), ("cortex", "c1"), ("operator", "ops")]:
            assert qsc_main(["pki", "issue", role, host, "--dir", str(self.pki)]) == 0
        self.keys = base / "keys"
        assert qsc_main(["keys", "init", "--dir", str(self.keys), "--component", "beta"]) == 0
        self.state = base / "state"
        self.etc = base / "etc"
        (self.etc / "ssh").mkdir(parents=True)
        (self.etc / "hosts").write_text("127.0.0.1 localhost\n")
        (self.etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (self.etc / "group").write_text("root:x:0:\n")
        (self.etc / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
        (self.etc / "localtime").symlink_to("hosts")
        self.healed = base / "heal"
        self.healed.mkdir()
        (self.healed / "sudoers").write_text("root ALL=(ALL) ALL\n")
        (self.healed / "motd").write_text("welcome\n")  # auto, its validator accepts
        (self.healed / "issue").write_text("Debian GNU/Linux 12\n")  # auto, validator refuses
        self.backups = base / "backups"
        self.sets = ("clean", "flip", "trunc", "gone", "extra")
        for name in self.sets:
            root = self.backups / name
            (root / "sub").mkdir(parents=True)
            (root / "a.dump").write_bytes(bytes(range(256)) * 64)
            (root / "sub" / "b.dump").write_bytes(b"b" * 5000)
        self.certs = base / "certs"
        self.certs.mkdir()
        self.cert_world = CertWorld(self.certs, ocsp_url)
        self.config = base / "beta.toml"
        self.config.write_text(self._toml())
        self.port_file = base / "run" / "port"
        self.first_baseline = b""  # revision 1, kept to be put back (a replay)

    def manifest(self, name: str) -> Path:
        return self.backups / f"{name}.manifest"

    def _toml(self) -> str:
        b = self.base
        stem = self.pki / f"beta-{HOST}"
        w = self.cert_world
        sets = "".join(
            f'[[backups.sets]]\nname = "{n}"\nroot = "{self.backups / n}"\n'
            f'manifest = "{self.manifest(n)}"\nschedule = "1h"\n\n'
            for n in self.sets
        )
        return f"""
[server]
listen = "{HOST}:0"
shutdown_grace = "3s"
[server.tls]
cert = "{stem}.crt"
key = "{stem}.key"
ca = "{self.pki / "ca.crt"}"

[outbox]
directory = "{b / "outbox"}"

[log]
format = "json"

[keys]
directory = "{self.keys}"

[state]
directory = "{self.state}"

[fim]
baseline = "{self.state / "fim-baseline.qsc"}"

[[fim.paths]]
path = "{self.etc}"

[[fim.paths]]
path = "{self.healed}"
heal = "approve"

[[fim.paths]]
path = "{self.healed / "motd"}"
heal = "auto"

[[fim.paths]]
path = "{self.healed / "issue"}"
heal = "auto"

[backups]
workers = 1

{sets}
[heal]
vault_directory = "{b / "vault"}"

[[heal.validators]]
path = "{self.healed / "motd"}"
command = ["grep", "-q", "welcome", "{{path}}"]

[[heal.validators]]
path = "{self.healed / "issue"}"
command = ["grep", "-q", "never in this file", "{{path}}"]

[certs]
interval = "1h"
trust_store = "{w.trust_store}"
revocation_timeout = "3s"

[[certs.watch]]
path = "{w.expiring}"

[[certs.watch]]
path = "{w.revoked}"
revocation = true

[[certs.watch]]
path = "{w.fine}"
revocation = true
"""


# --- the sealed subscription ----------------------------------------------------------------


class Collector:
    """A sealed Subscribe as cortex, read by a thread into a list that tests wait on."""

    def __init__(self, world: World, port: int, start_after: int = 0) -> None:
        stem = world.pki / "cortex-c1"
        channel = _channel(world, port, "cortex-c1")
        request = gpb.SubscribeRequest(start_after_seq=start_after)
        key = serialization.load_pem_private_key(stem.with_suffix(".key").read_bytes(), None)
        handshake, offer = SubscriberHandshake.start(key, context=subscribe_context(request))  # type: ignore[arg-type]
        request.sealed_session.CopyFrom(offer)
        self.stream: _Stream[gpb.SubscribeResponse] = gpb_grpc.GuardianServiceStub(
            channel
        ).Subscribe(request)  # type: ignore[assignment]
        first = next(self.stream)
        assert first.WhichOneof("payload") == "session_accept"
        ca = x509.load_pem_x509_certificate((world.pki / "ca.crt").read_bytes())
        self.opener = handshake.finish(
            first.session_accept, ca_cert=ca, expected_role="beta", expected_host=HOST
        )
        self.events: list[event_pb2.Event] = []
        self.kinds: set[str] = set()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.stream:
                kind = response.WhichOneof("payload")
                with self.cond:
                    self.kinds.add(str(kind))
                if kind == "sealed_batch":
                    batch = self.opener.open(response.sealed_batch)
                    with self.cond:
                        self.events.extend(batch.events)
                        self.cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        except BaseException as exc:
            self.error = exc

    def wait_for(
        self, what: str, match: Callable[[event_pb2.Event], bool], timeout: float = TIMEOUT
    ) -> event_pb2.Event:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if match(e)]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                got = "; ".join(e.summary for e in self.events)
                assert self.error is None, f"stream failed waiting for {what}: {self.error!r}"
                assert left > 0, f"no event: {what}; got: {got}"
                self.cond.wait(min(left, 0.5))

    def wait_for_sensor(
        self, sensor: str, state: int = pipeline_details_pb2.SENSOR_STATE_HEALTHY
    ) -> event_pb2.Event:
        """The latest health event of `sensor` in `state` (waiting for it)."""
        return self.wait_for(
            f"{sensor} {pipeline_details_pb2.SensorState.Name(state)}",  # type: ignore[arg-type]
            lambda e: e.sensor_health.sensor == sensor and e.sensor_health.state == state,
        )

    @property
    def last_seq(self) -> int:
        with self.cond:
            return self.events[-1].seq if self.events else 0

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)


def _channel(world: World, port: int, stem: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        (world.pki / "ca.crt").read_bytes(),
        (world.pki / f"{stem}.key").read_bytes(),
        (world.pki / f"{stem}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"{HOST}:{port}", creds)


# --- the process ----------------------------------------------------------------------------


class BetaProcess:
    def __init__(self, world: World) -> None:
        self.world = world
        world.port_file.unlink(missing_ok=True)
        world.port_file.parent.mkdir(exist_ok=True)
        # No proxies (the OCSP responder is local) and no stray QSC_BETA_* settings.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("QSC_") and "proxy" not in k.lower()
        }
        port = ["--port-file", str(world.port_file)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "beta", "run", "--config", str(world.config), *port],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + TIMEOUT
        while not world.port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"qsc-beta exited: {self.proc.communicate()[1]}")
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        self.port = int(world.port_file.read_text())
        self.channel = _channel(world, self.port, "operator-ops")
        self.beta = bpb_grpc.BetaServiceStub(self.channel)

    def terminate(self) -> tuple[int, str]:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = http.server.ThreadingHTTPServer((HOST, 0), _Responder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        w = World(tmp_path_factory.mktemp("beta-e2e"), f"http://{HOST}:{server.server_port}/")
        _Responder.world = w.cert_world
        for name in w.sets:
            keys = ["-m", str(w.manifest(name)), "--keys", str(w.keys), "--no-progress"]
            assert (
                beta_main(["manifest", "create", str(w.backups / name), "--name", name, *keys]) == 0
            )
        # The CLI path a deployment uses; the keyring comes from the config's [keys].
        init = subprocess.run(
            [sys.executable, "-m", "beta", "baseline", "init", "--config", str(w.config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert init.returncode == 0, init.stderr
        check = subprocess.run(
            [sys.executable, "-m", "beta", "run", "--config", str(w.config), "--check-config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert "configuration OK" in check.stdout
        assert "baseline version 1 revision 1" in check.stdout
        w.first_baseline = (w.state / "fim-baseline.qsc").read_bytes()
        # Backup damage done while Beta was down: its first scheduled run must find it.
        flip = w.backups / "flip" / "a.dump"
        data = bytearray(flip.read_bytes())
        data[1000] ^= 0x10
        flip.write_bytes(bytes(data))
        with (w.backups / "trunc" / "sub" / "b.dump").open("r+b") as f:
            f.truncate(1000)
        (w.backups / "gone" / "sub" / "b.dump").unlink()
        (w.backups / "extra" / "planted.sh").write_text("#!/bin/sh\n")
        yield w
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def running(world: World) -> Iterator[tuple[BetaProcess, Collector]]:
    proc = BetaProcess(world)
    collector = Collector(world, proc.port)
    try:
        yield proc, collector
    finally:
        collector.close()
        if proc.proc.poll() is None:
            proc.terminate()


def _integrity(path: Path, change: int) -> Callable[[event_pb2.Event], bool]:
    def match(e: event_pb2.Event) -> bool:
        fi = e.file_integrity
        return e.HasField("file_integrity") and fi.path == str(path) and fi.change == change

    return match


# --- FIM ------------------------------------------------------------------------------------


def test_fim_tampering_produces_events_saying_what_changed(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    _, events = running
    events.wait_for_sensor("fim.inotify")
    etc = world.etc
    (etc / "hosts").write_text("6.6.6.6 bank.example\n")
    os.chmod(etc / "passwd", 0o666)
    os.chown(etc / "group", 4242, 4343)
    os.setxattr(etc / "ssh" / "sshd_config", "user.qsc", b"planted")
    (etc / "localtime").unlink()
    (etc / "localtime").symlink_to("passwd")

    content = events.wait_for("content", _integrity(etc / "hosts", ipb.FILE_CHANGE_CONTENT_CHANGED))
    fi = content.file_integrity
    assert len(fi.old_blake3) == len(fi.new_blake3) == 32
    assert fi.old_blake3 != fi.new_blake3
    assert fi.detection == ipb.INTEGRITY_DETECTION_REALTIME
    assert content.guardian.id == f"beta-{HOST}"

    meta = ipb.FILE_CHANGE_METADATA_CHANGED
    perm = events.wait_for("permission", _integrity(etc / "passwd", meta)).file_integrity
    assert ipb.METADATA_FIELD_MODE in perm.changed_metadata
    assert (perm.old_metadata.mode & 0o777, perm.new_metadata.mode & 0o777) == (0o644, 0o666)
    assert perm.old_blake3 == perm.new_blake3

    owner = events.wait_for("owner", _integrity(etc / "group", meta)).file_integrity
    assert {ipb.METADATA_FIELD_UID, ipb.METADATA_FIELD_GID} <= set(owner.changed_metadata)
    assert (owner.new_metadata.uid, owner.new_metadata.gid) == (4242, 4343)

    xattr = events.wait_for("xattr", _integrity(etc / "ssh" / "sshd_config", meta))
    assert ipb.METADATA_FIELD_XATTRS in xattr.file_integrity.changed_metadata
    assert xattr.file_integrity.new_metadata.xattrs["user.qsc"] == b"planted"

    link = events.wait_for("symlink", _integrity(etc / "localtime", meta)).file_integrity
    assert ipb.METADATA_FIELD_SYMLINK_TARGET in link.changed_metadata
    assert (link.old_metadata.symlink_target, link.new_metadata.symlink_target) == (
        "hosts",
        "passwd",
    )


def test_scan_integrity_streams_progress_changes_then_a_summary(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, _ = running
    stream = proc.beta.ScanIntegrity(
        bpb.ScanIntegrityRequest(mode=bpb.SCAN_MODE_FULL), timeout=TIMEOUT
    )
    responses = list(stream)
    kinds = [r.WhichOneof("payload") for r in responses]
    assert kinds[0] == "progress"
    assert kinds[-1] == "summary"
    assert kinds.count("summary") == 1
    # Progress first, then the changes, then the summary: never interleaved.
    order = ["progress", "change", "summary"]
    assert kinds == sorted(kinds, key=lambda k: order.index(str(k)))
    changed = {r.change.path for r in responses if r.HasField("change")}
    assert str(world.etc / "hosts") in changed
    assert str(world.etc / "passwd") in changed
    summary = responses[-1].summary
    assert summary.mode == bpb.SCAN_MODE_FULL
    assert summary.content_changed >= 1
    assert summary.metadata_changed >= 4
    assert summary.files_scanned >= 7
    assert summary.unchanged >= 1
    assert not summary.baseline_tampered
    last = responses[kinds.index("summary") - 1 - kinds.count("change")].progress
    assert last.files_scanned == last.files_total == summary.files_scanned

    # A path outside every watched root is refused.
    with pytest.raises(grpc.RpcError) as caught:
        list(proc.beta.ScanIntegrity(bpb.ScanIntegrityRequest(paths=["/nowhere"])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- backups --------------------------------------------------------------------------------


def _backup(name: str) -> Callable[[event_pb2.Event], bool]:
    return lambda e: e.HasField("backup_integrity") and e.backup_integrity.backup_set == name


def test_scheduled_verification_types_each_backup_failure(
    running: tuple[BetaProcess, Collector],
) -> None:
    _, events = running
    expected = {
        "flip": ipb.BACKUP_FAILURE_KIND_CONTENT_MISMATCH,
        "trunc": ipb.BACKUP_FAILURE_KIND_TRUNCATED,
        "gone": ipb.BACKUP_FAILURE_KIND_MISSING,
        "extra": ipb.BACKUP_FAILURE_KIND_UNEXPECTED_FILE,
    }
    for name, kind in expected.items():
        result = events.wait_for(f"backup {name}", _backup(name)).backup_integrity
        assert not result.passed, name
        assert [f.kind for f in result.failures] == [kind], name
    clean = events.wait_for("backup clean", _backup("clean")).backup_integrity
    assert clean.passed
    assert clean.files_checked == clean.files_expected == 2


def test_verify_backup_on_demand_finds_a_bit_flip(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, events = running
    events.wait_for("backup clean", _backup("clean"))  # the scheduled run is over
    target = world.backups / "clean" / "sub" / "b.dump"
    data = bytearray(target.read_bytes())
    data[4321] ^= 0x01
    target.write_bytes(bytes(data))
    response = proc.beta.VerifyBackup(
        bpb.VerifyBackupRequest(backup_set="clean", depth=ipb.VERIFY_DEPTH_FULL), timeout=TIMEOUT
    )
    result = response.result
    assert not result.passed
    assert [(f.kind, f.path) for f in result.failures] == [
        (ipb.BACKUP_FAILURE_KIND_CONTENT_MISMATCH, "sub/b.dump")
    ]
    event = events.wait_for(
        "on-demand result", lambda e: _backup("clean")(e) and not e.backup_integrity.passed
    )
    assert event.backup_integrity == result
    with pytest.raises(grpc.RpcError) as caught:
        proc.beta.VerifyBackup(bpb.VerifyBackupRequest(backup_set="nope"), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- certificates ---------------------------------------------------------------------------


def _cert(path: Path) -> Callable[[event_pb2.Event], bool]:
    return lambda e: e.HasField("certificate_status") and e.certificate_status.path == str(path)


def test_certificate_events_for_expiring_and_revoked(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, events = running
    w = world.cert_world
    expiring = events.wait_for("expiring", _cert(w.expiring)).certificate_status
    assert list(expiring.problems) == [cpb.CERTIFICATE_PROBLEM_EXPIRING_SOON]
    assert expiring.expiry_threshold_days == 7
    assert expiring.days_until_expiry in (4, 5)
    revoked_event = events.wait_for("revoked", _cert(w.revoked))
    revoked = revoked_event.certificate_status
    assert list(revoked.problems) == [cpb.CERTIFICATE_PROBLEM_REVOKED]
    assert revoked.revocation.state == cpb.REVOCATION_STATE_REVOKED
    assert revoked.revocation.method == cpb.REVOCATION_METHOD_OCSP
    assert revoked_event.severity == 5  # CRITICAL
    fine = events.wait_for("fine", _cert(w.fine)).certificate_status
    assert list(fine.problems) == []
    assert fine.revocation.state == cpb.REVOCATION_STATE_GOOD

    response = proc.beta.CheckCertificate(
        bpb.CheckCertificateRequest(paths=[str(w.revoked)], skip_revocation=True),
        timeout=TIMEOUT,
    )
    (status,) = response.certificates
    assert list(status.problems) == []
    assert status.revocation.state == cpb.REVOCATION_STATE_NOT_CHECKED


# --- healing, policy approve ------------------------------------------------------------------


def _heal(path: Path, state: int) -> Callable[[event_pb2.Event], bool]:
    return lambda e: (
        e.HasField("heal_action")
        and e.heal_action.path == str(path)
        and e.heal_action.state == state
    )


def test_approve_policy_proposes_then_heals_on_approval(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, events = running
    events.wait_for_sensor("heal")
    target = world.healed / "sudoers"
    good = target.read_bytes()
    target.write_text("ALL ALL=(ALL) NOPASSWD: ALL\n")  # the attack

    tamper = events.wait_for("tamper", _integrity(target, ipb.FILE_CHANGE_CONTENT_CHANGED))
    assert tamper.file_integrity.heal_policy == hpb.HEAL_POLICY_APPROVE
    proposed = events.wait_for("proposed", _heal(target, hpb.HEAL_STATE_PROPOSED)).heal_action
    assert proposed.trigger_event_id == tamper.id
    assert proposed.before_blake3 == tamper.file_integrity.new_blake3
    assert target.read_bytes() != good  # waiting for a decision, not healed

    listed = proc.beta.ListHealProposals(
        bpb.ListHealProposalsRequest(states=[hpb.HEAL_STATE_PROPOSED]), timeout=TIMEOUT
    ).proposals
    (proposal,) = [p for p in listed if p.path == str(target)]
    assert proposal.id == proposed.proposal_id
    assert proposal.baseline_blake3 == tamper.file_integrity.old_blake3

    approved = proc.beta.ApproveHeal(
        bpb.ApproveHealRequest(
            proposal_id=proposal.id,
            comment="restore the reviewed copy",
            expected_current_blake3=proposal.current_blake3,
        ),
        timeout=TIMEOUT,
    ).proposal
    assert approved.state == hpb.HEAL_STATE_VERIFIED
    assert approved.actor == "spiffe://e2e.test/operator/ops"  # from the certificate
    assert target.read_bytes() == good

    healed = events.wait_for("verified", _heal(target, hpb.HEAL_STATE_VERIFIED)).heal_action
    assert healed.actor == "spiffe://e2e.test/operator/ops"
    assert healed.after_blake3 == healed.baseline_blake3 == tamper.file_integrity.old_blake3
    assert healed.before_blake3 == tamper.file_integrity.new_blake3
    assert healed.trigger_event_id == tamper.id
    # The file matches the baseline again, and Beta's own restore raised no file_integrity
    # event: the realtime path handles inotify events in order on one thread, so once a file
    # created after the restore is reported, the restore's own events have been handled.
    scan = list(
        proc.beta.ScanIntegrity(bpb.ScanIntegrityRequest(paths=[str(target)]), timeout=TIMEOUT)
    )
    assert not [r for r in scan if r.HasField("change")]
    assert scan[-1].summary.unchanged == 1
    marker = world.etc / "after-the-restore"
    marker.write_text("created after the heal\n")
    events.wait_for("marker", _integrity(marker, ipb.FILE_CHANGE_CREATED))
    with events.cond:
        about = [e for e in events.events if e.file_integrity.path == str(target)]
    assert [e.id for e in about] == [tamper.id]

    # Deciding twice is refused.
    with pytest.raises(grpc.RpcError) as caught:
        proc.beta.RejectHeal(bpb.RejectHealRequest(proposal_id=proposal.id), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        proc.beta.ApproveHeal(bpb.ApproveHealRequest(proposal_id="nope"), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_rejected_proposal_leaves_the_file_as_it_is(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, events = running
    target = world.healed / "sudoers"
    events.wait_for("first heal", _heal(target, hpb.HEAL_STATE_VERIFIED))
    target.write_text("root ALL=(ALL) ALL\n# a change the operator accepts\n")
    proposed = events.wait_for(
        "second proposal",
        lambda e: (
            _heal(target, hpb.HEAL_STATE_PROPOSED)(e)
            and e.heal_action.proposal_id != _first_proposal(events, target)
        ),
    ).heal_action
    rejected = proc.beta.RejectHeal(
        bpb.RejectHealRequest(proposal_id=proposed.proposal_id, comment="intended"),
        timeout=TIMEOUT,
    ).proposal
    assert rejected.state == hpb.HEAL_STATE_REJECTED
    assert rejected.comment == "intended"
    events.wait_for("rejected", _heal(target, hpb.HEAL_STATE_REJECTED))
    assert "accepts" in target.read_text()


def _first_proposal(events: Collector, target: Path) -> str:
    with events.cond:
        return next(
            e.heal_action.proposal_id
            for e in events.events
            if _heal(target, hpb.HEAL_STATE_PROPOSED)(e)
        )


def test_auto_policy_heals_at_once_through_its_validator(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    _, events = running
    motd, issue = world.healed / "motd", world.healed / "issue"
    good_motd = motd.read_bytes()
    motd.write_text("you have been pwned\n")
    issue.write_text("pwned\n")

    healed = events.wait_for("motd healed", _heal(motd, hpb.HEAL_STATE_VERIFIED)).heal_action
    assert healed.policy == hpb.HEAL_POLICY_AUTO
    assert healed.actor == ""  # the policy decided
    assert healed.validator.passed
    assert healed.validator.command.startswith("grep -q welcome ")
    assert motd.read_bytes() == good_motd
    tamper = events.wait_for("motd tamper", _integrity(motd, ipb.FILE_CHANGE_CONTENT_CHANGED))
    assert healed.trigger_event_id == tamper.id

    failed = events.wait_for("issue refused", _heal(issue, hpb.HEAL_STATE_FAILED)).heal_action
    assert not failed.validator.passed
    assert failed.validator.exit_code == 1
    assert "validator" in failed.failure_reason
    assert issue.read_text() == "pwned\n"  # nothing was swapped in
    with events.cond:
        proposals = [e for e in events.events if _heal(motd, hpb.HEAL_STATE_PROPOSED)(e)]
    assert proposals == []


# --- restart over a tampered baseline (last: it restarts the process) -------------------------


def _restart_over(world: World, seen: int, baseline: bytes, reason: str) -> int:
    """Start Beta over `baseline`: it must report it tampered (for `reason`), FIM failed, and
    refuse an integrity scan; then SIGTERM. Returns the last seq seen."""
    path = world.state / "fim-baseline.qsc"
    path.write_bytes(baseline)
    proc = BetaProcess(world)
    events = Collector(world, proc.port, start_after=seen)
    try:
        tampered = events.wait_for(
            "baseline tampered", _integrity(path, ipb.FILE_CHANGE_BASELINE_TAMPERED)
        )
        assert tampered.seq > seen
        assert tampered.severity == 5  # CRITICAL
        assert reason in tampered.summary
        failed = events.wait_for_sensor("fim.inotify", pipeline_details_pb2.SENSOR_STATE_FAILED)
        assert "baseline failed verification" in failed.sensor_health.reasons[0]
        assert reason in failed.sensor_health.reasons[0]
        with pytest.raises(grpc.RpcError) as caught:
            list(proc.beta.ScanIntegrity(bpb.ScanIntegrityRequest(), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        last = events.last_seq
    finally:
        events.close()
        code, err = proc.terminate()
    assert code == 0, err
    return last


def test_sigterm_then_a_replayed_or_edited_baseline_is_reported_after_restart(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, events = running
    seen = events.last_seq
    events.close()
    code, err = proc.terminate()
    assert code == 0, err
    assert "Traceback" not in err
    assert '"message": "guardian stopped"' in err
    current = (world.state / "fim-baseline.qsc").read_bytes()
    assert current != world.first_baseline  # the heal moved the baseline to a new revision

    # A validly sealed but older baseline put back while Beta was down: a replay.
    seen = _restart_over(world, seen, world.first_baseline, "older than revision")
    # An edited byte in the sealed blob.
    edited = bytearray(current)
    edited[-10] ^= 0xFF
    _restart_over(world, seen, bytes(edited), "authentication failed")
