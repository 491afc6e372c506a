"""Revocation against a real OCSP responder and CRL endpoint over HTTP on 127.0.0.1.

The responder is built with `cryptography` and served by http.server in a thread. Its URL path
picks the behaviour: /good, /revoked, /unknown, /stale, /future, /forged (signed by an impostor
key under the issuer's name), /bitflip (a damaged signature), /no-nonce, /wrong-nonce,
/other-cert, /delegated (a responder certificate with the OCSP signing EKU),
/delegated-no-eku, /try-later, /http-500. /crl/<kind> serves CRLs: good, revoked, stale, forged,
pem. A socket that accepts and never answers and a closed port stand in for a dead responder.
"""

from __future__ import annotations

import datetime as dt
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from beta.certs import (
    CertificateChecker,
    Problem,
    RevocationConfig,
    RevocationErrorKind,
    RevocationMethod,
    RevocationState,
    WatchedCertificate,
    check_crl,
    check_ocsp,
    check_revocation,
)
from beta.certs.convert import report_to_proto
from qsc.common.v1 import certificate_details_pb2 as pb
from tests.certs_helpers import CA_KEY_USAGE, name

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    ocsp_url: str | None = None,
    crl_url: str | None = None,
) -> x509.Certificate:
    issuer_name, signer = issuer or (name(cn), key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - DAY)
        .not_valid_after(_now() + 90 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            CA_KEY_USAGE,
            critical=True,
        )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if ocsp_url:
        b = b.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    if crl_url:
        b = b.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(crl_url)], None, None, None
                    )
                ]
            ),
            critical=False,
        )
    return b.sign(signer, hashes.SHA256())


@dataclass
class Pki:
    base: str
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ca: x509.Certificate = field(init=False)
    leaf: x509.Certificate = field(init=False)
    revoked: x509.Certificate = field(init=False)
    impostor_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    impostor: x509.Certificate = field(init=False)
    responder_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    responder: x509.Certificate = field(init=False)
    responder_no_eku: x509.Certificate = field(init=False)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca = _cert("OCSP Test CA", self.ca_key, None, ca=True)
        issuer = (self.ca.subject, self.ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        # Its AIA and CDP point at the good endpoints: the default path, no overrides.
        self.leaf = _cert(
            "leaf.example",
            key,
            issuer,
            ocsp_url=f"{self.base}/good",
            crl_url=f"{self.base}/crl/good",
        )
        self.revoked = _cert("revoked.example", key, issuer)
        # Same name as the CA, different key: what a forger would present.
        self.impostor = _cert("OCSP Test CA", self.impostor_key, None, ca=True)
        self.responder = _cert(
            "OCSP Responder", self.responder_key, issuer, eku=[ExtendedKeyUsageOID.OCSP_SIGNING]
        )
        self.responder_no_eku = _cert(
            "OCSP Responder", self.responder_key, issuer, eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        )

    # --- OCSP ---

    def ocsp_answer(self, mode: str, request: ocsp.OCSPRequest) -> bytes:
        if mode == "try-later":
            return ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.TRY_LATER
            ).public_bytes(serialization.Encoding.DER)
        try:
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            nonce = None
        now = _now()
        this_update, next_update = now - dt.timedelta(minutes=1), now + HOUR
        if mode == "stale":
            this_update, next_update = now - 3 * DAY, now - DAY
        if mode == "future":
            this_update, next_update = now + DAY, now + 2 * DAY
        by_serial = {c.serial_number: c for c in (self.leaf, self.revoked)}
        cert = by_serial.get(request.serial_number)
        if mode == "other-cert" or cert is None:
            cert = self.responder
        status, when, reason = ocsp.OCSPCertStatus.GOOD, None, None
        if mode == "unknown":
            status = ocsp.OCSPCertStatus.UNKNOWN
        if mode == "revoked" or cert is self.revoked:
            status, when, reason = (
                ocsp.OCSPCertStatus.REVOKED,
                now - 2 * DAY,
                x509.ReasonFlags.key_compromise,
            )
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self.ca,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=when,
            revocation_reason=reason,
        )
        if mode == "wrong-nonce":
            builder = builder.add_extension(x509.OCSPNonce(b"\x01" * 32), critical=False)
        elif mode != "no-nonce" and nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        signer_cert, signer_key = self.ca, self.ca_key
        if mode == "forged":
            signer_cert, signer_key = self.impostor, self.impostor_key
        elif mode in ("delegated", "delegated-no-eku"):
            signer_cert = self.responder if mode == "delegated" else self.responder_no_eku
            signer_key = self.responder_key
            builder = builder.certificates([signer_cert])
        encoding = (
            ocsp.OCSPResponderEncoding.NAME if mode == "forged" else ocsp.OCSPResponderEncoding.HASH
        )
        builder = builder.responder_id(encoding, signer_cert)
        der = builder.sign(signer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        if mode == "bitflip":
            # No certificates follow: the last byte is inside the ECDSA signature's s value.
            der = der[:-1] + bytes([der[-1] ^ 0x01])
        return der

    # --- CRL ---

    def crl(self, kind: str) -> bytes:
        now = _now()
        last, nxt = now - HOUR, now + DAY
        if kind == "stale":
            last, nxt = now - 10 * DAY, now - 3 * DAY
        signer_key = self.impostor_key if kind == "forged" else self.ca_key
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.subject)
            .last_update(last)
            .next_update(nxt)
        )
        revoked_serials = [self.revoked.serial_number]
        if kind == "revoked":
            revoked_serials.append(self.leaf.serial_number)
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - 2 * DAY)
                .add_extension(x509.CRLReason(x509.ReasonFlags.superseded), critical=False)
                .build()
            )
        crl = builder.sign(signer_key, hashes.SHA256())
        encoding = serialization.Encoding.PEM if kind == "pem" else serialization.Encoding.DER
        return crl.public_bytes(encoding)


class _Handler(http.server.BaseHTTPRequestHandler):
    pki: Pki

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        mode = self.path.strip("/")
        self.pki.requests.append(f"POST {mode}")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if mode == "http-500":
            self._send(b"oops", "text/plain", 500)
            return
        request = ocsp.load_der_ocsp_request(body)
        assert self.headers["Content-Type"] == "application/ocsp-request"
        self._send(self.pki.ocsp_answer(mode, request), "application/ocsp-response")

    def do_GET(self) -> None:
        kind = self.path.removeprefix("/crl/")
        self.pki.requests.append(f"GET {kind}")
        self._send(self.pki.crl(kind), "application/pkix-crl")


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    p = Pki(f"http://127.0.0.1:{server.server_address[1]}")
    _Handler.pki = p
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield p
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[str]:
    """Accepts connections (the kernel does, from the backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/ocsp"
    finally:
        sock.close()


@pytest.fixture(scope="module")
def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/ocsp"


def cfg(
    pki: Pki, ocsp_path: str | None = None, crl: str | None = None, **kw: object
) -> RevocationConfig:
    return RevocationConfig(
        ocsp_url=f"{pki.base}/{ocsp_path}" if ocsp_path else None,
        crl_url=f"{pki.base}/crl/{crl}" if crl else None,
        timeout=kw.pop("timeout", 2.0),  # type: ignore[arg-type]
        use_env_proxy=False,
        **kw,  # type: ignore[arg-type]
    )


# --- OCSP answers -----------------------------------------------------------------------------


def test_good_via_the_certificates_own_aia_url(pki: Pki) -> None:
    r = check_ocsp(pki.leaf, pki.ca, RevocationConfig(use_env_proxy=False))
    assert r.state is RevocationState.GOOD
    assert r.method is RevocationMethod.OCSP
    assert r.url == f"{pki.base}/good"
    assert r.this_update is not None
    assert r.next_update is not None
    assert not r.error


def test_revoked_carries_time_and_reason(pki: Pki) -> None:
    r = check_ocsp(pki.leaf, pki.ca, cfg(pki, "revoked"))
    assert r.state is RevocationState.REVOKED
    assert r.revocation_reason == "keyCompromise"
    assert r.revocation_time is not None
    assert r.revocation_time < _now()


def test_unknown_is_an_answer_not_an_error(pki: Pki) -> None:
    r = check_revocation(pki.leaf, pki.ca, cfg(pki, "unknown", crl="revoked"))
    assert r.state is RevocationState.UNKNOWN
    assert r.method is RevocationMethod.OCSP
    assert not r.fallback_used  # the CRL is not consulted on UNKNOWN


def test_delegated_responder_with_the_ocsp_signing_eku(pki: Pki) -> None:
    assert check_ocsp(pki.leaf, pki.ca, cfg(pki, "delegated")).state is RevocationState.GOOD
    r = check_ocsp(pki.leaf, pki.ca, cfg(pki, "delegated-no-eku"))
    assert r.state is RevocationState.ERROR
    assert r.error_kind is RevocationErrorKind.BAD_SIGNATURE
    assert "OCSP signing EKU" in r.error


@pytest.mark.parametrize(
    ("mode", "kind", "words"),
    [
        ("stale", RevocationErrorKind.STALE, "nextUpdate"),
        ("future", RevocationErrorKind.NOT_YET_VALID, "in the future"),
        ("forged", RevocationErrorKind.BAD_SIGNATURE, "signature does not verify"),
        ("bitflip", RevocationErrorKind.BAD_SIGNATURE, "signature does not verify"),
        ("wrong-nonce", RevocationErrorKind.NONCE_MISMATCH, "not ours"),
        ("no-nonce", RevocationErrorKind.NONCE_MISMATCH, "no nonce"),
        ("other-cert", RevocationErrorKind.CERT_ID_MISMATCH, "another certificate"),
        ("try-later", RevocationErrorKind.RESPONDER_ERROR, "try_later"),
        ("http-500", RevocationErrorKind.UNREACHABLE, "HTTP 500"),
    ],
)
def test_untrustworthy_answers_are_errors(
    pki: Pki, mode: str, kind: RevocationErrorKind, words: str
) -> None:
    r = check_ocsp(pki.leaf, pki.ca, cfg(pki, mode))
    assert r.state is RevocationState.ERROR, r
    assert r.error_kind is kind
    assert words in r.error
    assert r.url == f"{pki.base}/{mode}"


def test_missing_nonce_can_be_tolerated_when_configured(pki: Pki) -> None:
    r = check_ocsp(pki.leaf, pki.ca, cfg(pki, "no-nonce", require_nonce=False))
    assert r.state is RevocationState.GOOD
    # A wrong nonce never is.
    r = check_ocsp(pki.leaf, pki.ca, cfg(pki, "wrong-nonce", require_nonce=False))
    assert r.error_kind is RevocationErrorKind.NONCE_MISMATCH


def test_clock_skew_tolerance_accepts_a_slightly_early_answer(pki: Pki) -> None:
    r = check_ocsp(pki.leaf, pki.ca, cfg(pki, "future", clock_skew=2 * DAY), now=_now())
    assert r.state is RevocationState.GOOD


# --- no answer, CRL fallback ----------------------------------------------------------------


def test_silent_responder_times_out_and_the_crl_answers(pki: Pki, blackhole: str) -> None:
    config = RevocationConfig(
        ocsp_url=blackhole, crl_url=f"{pki.base}/crl/good", timeout=0.5, use_env_proxy=False
    )
    r = check_revocation(pki.leaf, pki.ca, config)
    assert r.state is RevocationState.GOOD
    assert r.method is RevocationMethod.CRL
    assert r.fallback_used
    assert "timed out" in r.ocsp_error
    assert r.url == f"{pki.base}/crl/good"


def test_closed_port_falls_back_to_the_crl_which_says_revoked(pki: Pki, closed_port: str) -> None:
    config = RevocationConfig(
        ocsp_url=closed_port, crl_url=f"{pki.base}/crl/revoked", timeout=1, use_env_proxy=False
    )
    r = check_revocation(pki.leaf, pki.ca, config)
    assert r.state is RevocationState.REVOKED
    assert r.method is RevocationMethod.CRL
    assert r.revocation_reason == "superseded"
    assert "refused" in r.ocsp_error.lower()


def test_a_badly_signed_ocsp_answer_falls_back_too(pki: Pki) -> None:
    r = check_revocation(pki.leaf, pki.ca, cfg(pki, "forged", crl="good"))
    assert r.state is RevocationState.GOOD
    assert r.fallback_used
    assert "signature" in r.ocsp_error


def test_fallback_via_the_certificates_crl_distribution_point(pki: Pki, blackhole: str) -> None:
    r = check_revocation(
        pki.leaf, pki.ca, RevocationConfig(ocsp_url=blackhole, timeout=0.5, use_env_proxy=False)
    )
    assert r.state is RevocationState.GOOD
    assert r.url == f"{pki.base}/crl/good"


@pytest.mark.parametrize(
    ("crl", "kind", "words"),
    [
        ("stale", RevocationErrorKind.STALE, "stale"),
        ("forged", RevocationErrorKind.BAD_SIGNATURE, "CRL signature does not verify"),
    ],
)
def test_when_both_fail_the_result_says_why_for_each(
    pki: Pki, blackhole: str, crl: str, kind: RevocationErrorKind, words: str
) -> None:
    config = RevocationConfig(
        ocsp_url=blackhole, crl_url=f"{pki.base}/crl/{crl}", timeout=0.5, use_env_proxy=False
    )
    r = check_revocation(pki.leaf, pki.ca, config)
    assert r.state is RevocationState.ERROR
    assert r.error.startswith("OCSP: ")
    assert "timed out" in r.error
    assert "; CRL: " in r.error
    assert words in r.error
    assert check_crl(pki.leaf, pki.ca, config).error_kind is kind


def test_crl_from_a_pem_file_and_a_revoked_serial(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(pki.crl("pem"))
    config = RevocationConfig(crl_url=str(path))
    assert check_crl(pki.leaf, pki.ca, config).state is RevocationState.GOOD
    r = check_crl(pki.revoked, pki.ca, config)
    assert r.state is RevocationState.REVOKED
    assert r.revocation_reason == "superseded"
    missing = check_crl(pki.leaf, pki.ca, RevocationConfig(crl_url=str(tmp_path / "nope")))
    assert missing.error_kind is RevocationErrorKind.UNREACHABLE


def test_no_sources_and_no_issuer(pki: Pki) -> None:
    r = check_revocation(pki.revoked, pki.ca, RevocationConfig(use_env_proxy=False))
    assert r.state is RevocationState.ERROR
    assert "no OCSP URL" in r.error
    assert "no CRL distribution point" in r.error
    r = check_revocation(pki.leaf, None, RevocationConfig())
    assert r.error_kind is RevocationErrorKind.NO_ISSUER


# --- through the certificate checker --------------------------------------------------------


def test_the_checker_reports_revocation_end_to_end(
    pki: Pki, tmp_path: Path, blackhole: str
) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(
        pki.revoked.public_bytes(serialization.Encoding.PEM)
        + pki.ca.public_bytes(serialization.Encoding.PEM)
    )
    checker = CertificateChecker()
    (leaf, ca) = checker.check(WatchedCertificate(chain, revocation=cfg(pki, "good")))
    assert leaf.problems == (Problem.REVOKED,)  # the responder knows this serial is revoked
    msg = report_to_proto(leaf)
    assert msg.revocation.state == pb.REVOCATION_STATE_REVOKED
    assert msg.revocation.method == pb.REVOCATION_METHOD_OCSP
    assert msg.revocation.url == f"{pki.base}/good"
    assert ca.revocation.state is RevocationState.NOT_CHECKED

    dead = RevocationConfig(
        ocsp_url=blackhole, crl_url=f"{pki.base}/crl/stale", timeout=0.5, use_env_proxy=False
    )
    (leaf, _) = checker.check(WatchedCertificate(chain, revocation=dead))
    assert leaf.problems == (Problem.REVOCATION_UNAVAILABLE,)
    msg = report_to_proto(leaf)
    assert msg.revocation.state == pb.REVOCATION_STATE_ERROR
    assert "timed out" in msg.revocation.error
