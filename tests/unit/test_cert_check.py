"""Certificate checks on real files: expiry, validity, chains, keys, strength, names, bad files."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from beta.certs import (
    CertificateChecker,
    CertPolicy,
    ExpiryThreshold,
    Problem,
    RevocationConfig,
    RevocationMethod,
    RevocationResult,
    RevocationState,
    Severity,
    WatchedCertificate,
    check_certificate_file,
)
from beta.certs.check import hostname_matches
from beta.certs.convert import report_to_event, report_to_proto
from qsc.common.v1 import certificate_details_pb2 as pb
from qsc.common.v1 import classification_pb2 as cls
from tests.certs_helpers import CA_KEY_USAGE, name

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def make_cert(
    cn: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None = None,
    *,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> x509.Certificate:
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            CA_KEY_USAGE,
            critical=True,
        )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root_key = ec_key()
        self.root = make_cert("Test Root", self.root_key, ca=True, not_after=NOW + 3650 * DAY)
        self.int_key = ec_key()
        self.intermediate = make_cert(
            "Test Intermediate", self.int_key, (self.root, self.root_key), ca=True
        )
        self.leaf_key = ec_key()
        self.leaf = self.issue("www.example.org")
        self.store = self.write("root.pem", pem(self.root))

    def issue(self, cn: str, **kw: object) -> x509.Certificate:
        kw.setdefault("dns", [cn, f"*.{cn}"])
        key = kw.pop("key", self.leaf_key)
        return make_cert(cn, key, (self.intermediate, self.int_key), **kw)  # type: ignore[arg-type]

    def write(self, filename: str, data: bytes) -> Path:
        path = self.tmp / filename
        path.write_bytes(data)
        return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def check(path: Path, **kw: object) -> list:  # type: ignore[type-arg]
    policy = kw.pop("policy", None)
    now = kw.pop("now", NOW)
    watch = WatchedCertificate(path, **kw)  # type: ignore[arg-type]
    return list(check_certificate_file(watch, policy, now=now))  # type: ignore[arg-type]


# --- a healthy certificate ------------------------------------------------------------------


def test_a_healthy_chain_file_has_no_problems(pki: Pki) -> None:
    chain = pki.write("fullchain.pem", pem(pki.leaf, pki.intermediate))
    key = pki.write("key.pem", key_pem(pki.leaf_key))
    leaf, inter = check(
        chain,
        key_path=key,
        hostnames=("www.example.org", "api.www.example.org"),
        trust_store=pki.store,
    )
    assert leaf.problems == ()
    assert inter.problems == ()
    assert leaf.severity is Severity.INFO
    assert leaf.subject == "CN=www.example.org"
    assert leaf.issuer == "CN=Test Intermediate"
    assert leaf.serial_number == f"{pki.leaf.serial_number:x}"
    assert leaf.sha256_fingerprint == pki.leaf.fingerprint(hashes.SHA256())
    assert leaf.key_algorithm == "EC P-256"
    assert leaf.key_bits == 256
    assert leaf.signature_algorithm == "ecdsa-with-SHA256"
    assert leaf.subject_alt_names == ("DNS:www.example.org", "DNS:*.www.example.org")
    assert leaf.days_until_expiry in (364, 365)
    assert (leaf.index, inter.index) == (0, 1)
    msg = report_to_proto(leaf)
    assert list(msg.problems) == []
    assert msg.not_after.seconds > 0
    assert msg.revocation.state == pb.REVOCATION_STATE_NOT_CHECKED
    event = report_to_event(leaf)
    assert event.severity == cls.SEVERITY_INFO
    assert event.category == cls.CATEGORY_CERTIFICATE
    assert event.WhichOneof("detail") == "certificate_status"


# --- validity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_left", "threshold", "severity"),
    [
        (40, 0, Severity.INFO),
        (29, 30, Severity.LOW),
        (13, 14, Severity.MEDIUM),
        (3, 7, Severity.HIGH),
    ],
)
def test_expiry_thresholds(pki: Pki, days_left: int, threshold: int, severity: Severity) -> None:
    cert = pki.issue("soon.example", not_after=NOW + days_left * DAY + dt.timedelta(hours=1))
    (r,) = check(pki.write("c.pem", pem(cert)))
    assert r.days_until_expiry == days_left
    assert r.expiry_threshold_days == threshold
    assert r.severity is severity
    assert r.problems == ((Problem.EXPIRING_SOON,) if threshold else ())
    if threshold:
        assert report_to_proto(r).problems == [pb.CERTIFICATE_PROBLEM_EXPIRING_SOON]
        assert report_to_event(r).severity == int(severity)


def test_custom_thresholds(pki: Pki) -> None:
    policy = CertPolicy(
        thresholds=(ExpiryThreshold(90, Severity.INFO), ExpiryThreshold(60, Severity.LOW))
    )
    cert = pki.issue("x.example", not_after=NOW + 70 * DAY)
    (r,) = check(pki.write("c.pem", pem(cert)), policy=policy)
    assert r.expiry_threshold_days == 90
    assert r.severity is Severity.INFO


def test_expired_is_reported_but_not_as_a_broken_chain(pki: Pki) -> None:
    cert = pki.issue("old.example", not_before=NOW - 400 * DAY, not_after=NOW - 3 * DAY)
    path = pki.write("chain.pem", pem(cert, pki.intermediate))
    r = check(path, trust_store=pki.store)[0]
    assert r.problems == (Problem.EXPIRED,)
    assert r.days_until_expiry == -3
    assert r.severity is Severity.HIGH


def test_not_yet_valid_with_clock_skew_tolerance(pki: Pki) -> None:
    future = pki.issue("future.example", not_before=NOW + 2 * DAY)
    (r,) = check(pki.write("f.pem", pem(future)))
    assert r.problems == (Problem.NOT_YET_VALID,)
    barely = pki.issue("skew.example", not_before=NOW + dt.timedelta(minutes=2))
    (r,) = check(pki.write("s.pem", pem(barely)))
    assert r.problems == ()


# --- chains ---------------------------------------------------------------------------------


def test_chain_broken_without_its_intermediate(pki: Pki) -> None:
    (r,) = check(pki.write("leaf.pem", pem(pki.leaf)), trust_store=pki.store)
    assert r.problems == (Problem.CHAIN_INVALID,)
    assert "candidates exhausted" in r.chain_error
    assert report_to_proto(r).chain_error == r.chain_error


def test_chain_to_another_ca_is_invalid(pki: Pki, tmp_path: Path) -> None:
    other_key = ec_key()
    other = make_cert("Other Root", other_key, ca=True)
    store = pki.write("other.pem", pem(other))
    leaf, inter = check(pki.write("c.pem", pem(pki.leaf, pki.intermediate)), trust_store=store)
    assert Problem.CHAIN_INVALID in leaf.problems
    assert Problem.CHAIN_INVALID in inter.problems


def test_an_expired_intermediate_breaks_the_chain(pki: Pki) -> None:
    stale_int = make_cert(
        "Test Intermediate",
        pki.int_key,
        (pki.root, pki.root_key),
        ca=True,
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    leaf, inter = check(pki.write("c.pem", pem(pki.leaf, stale_int)), trust_store=pki.store)
    assert Problem.CHAIN_INVALID in leaf.problems
    assert inter.problems == (Problem.EXPIRED,)


def test_trust_store_directory_and_anchor_in_the_file(pki: Pki, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    (store_dir / "root.crt").write_bytes(pki.root.public_bytes(serialization.Encoding.DER))
    reports = check(
        pki.write("c.pem", pem(pki.leaf, pki.intermediate, pki.root)), trust_store=store_dir
    )
    assert [r.problems for r in reports] == [(), (), ()]


def test_a_broken_trust_store_is_a_chain_problem_not_a_crash(pki: Pki) -> None:
    bad_store = pki.write(
        "store.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (r,) = check(pki.write("c.pem", pem(pki.leaf)), trust_store=bad_store)
    assert r.problems == (Problem.CHAIN_INVALID,)
    assert "trust_store" in r.chain_error


# --- keys and strength ----------------------------------------------------------------------


def test_key_mismatch_and_unusable_keys(pki: Pki) -> None:
    cert = pki.write("c.pem", pem(pki.leaf))
    (r,) = check(cert, key_path=pki.write("other.key", key_pem(ec_key())))
    assert r.problems == (Problem.KEY_MISMATCH,)
    assert r.severity is Severity.HIGH
    (r,) = check(cert, key_path=pki.write("locked.key", key_pem(pki.leaf_key, b"pw")))
    assert r.problems == (Problem.UNREADABLE,)
    assert "encrypted" in r.details[0]
    (r,) = check(cert, key_path=pki.tmp / "absent.key")
    assert r.problems == (Problem.UNREADABLE,)
    secret = key_pem(pki.leaf_key)
    (r,) = check(cert, key_path=pki.write("garbage.key", b"not a key"))
    assert r.problems == (Problem.UNREADABLE,)
    assert "not a key" not in r.details[0]
    combined = pki.write("combined.pem", pem(pki.leaf) + secret)
    (r, *_) = check(combined, key_path=combined)
    assert r.problems == ()


def test_rsa_1024_is_a_weak_key(pki: Pki) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    cert = make_cert("weak.example", weak)
    (r,) = check(pki.write("c.pem", pem(cert)))
    assert r.problems == (Problem.WEAK_KEY,)
    assert (r.key_algorithm, r.key_bits) == ("RSA", 1024)
    assert "1024 bits (minimum 2048)" in r.details[0]
    strong = make_cert("ok.example", rsa.generate_private_key(65537, 2048))
    (r,) = check(pki.write("ok.pem", pem(strong)))
    assert r.problems == ()
    assert r.signature_algorithm == "sha256WithRSAEncryption"


def test_a_small_curve_is_a_weak_key(pki: Pki) -> None:
    cert = make_cert("p192.example", ec_key(ec.SECP192R1()))
    (r,) = check(pki.write("c.pem", pem(cert)))
    assert r.problems == (Problem.WEAK_KEY,)
    assert r.key_algorithm == "EC P-192"


def _openssl_cert(tmp: Path, digest: str) -> Path:
    """cryptography refuses to sign with SHA-1 or MD5; openssl still can."""
    out = tmp / f"{digest}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", f"-{digest}", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(tmp / f"{digest}.key"), "-out", str(out),
            "-subj", f"/CN={digest}.example", "-days", "100",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize(("digest", "label"), [("sha1", "SHA-1"), ("md5", "MD5")])
def test_weak_signature_hashes(tmp_path: Path, digest: str, label: str) -> None:
    try:
        path = _openssl_cert(tmp_path, digest)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"this openssl refuses {digest}: {exc.stderr.decode()[:200]}")
    # openssl dates the certificate from the real clock, which is past NOW in a long run.
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    (r,) = check(path, now=now)
    assert r.problems == (Problem.WEAK_SIGNATURE,)
    assert r.details == (f"signed with {label}",)
    assert r.signature_algorithm == f"{digest}WithRSAEncryption"
    # A trust anchor's self-signature is not relied upon: no finding there.
    (r,) = check(path, trust_store=path, now=now)
    assert r.problems == ()


# --- names ----------------------------------------------------------------------------------


def test_hostname_mismatch_lists_the_missing_names(pki: Pki) -> None:
    cert = pki.issue("www.example.org", ips=["192.0.2.7"])
    (r,) = check(
        pki.write("c.pem", pem(cert)),
        hostnames=("www.example.org", "mail.example.org", "192.0.2.7", "192.0.2.8"),
    )
    assert r.problems == (Problem.HOSTNAME_MISMATCH,)
    assert r.missing_hostnames == ("mail.example.org", "192.0.2.8")
    assert list(report_to_proto(r).missing_hostnames) == ["mail.example.org", "192.0.2.8"]


@pytest.mark.parametrize(
    ("expected", "sans", "ok"),
    [
        ("www.example.org", ["www.example.org"], True),
        ("WWW.Example.ORG.", ["www.example.org"], True),
        ("a.example.org", ["*.example.org"], True),
        ("example.org", ["*.example.org"], False),
        ("a.b.example.org", ["*.example.org"], False),
        ("x.com", ["*.com"], False),
        ("www.example.org", ["example.org"], False),
        ("bücher.example", ["xn--bcher-kva.example"], True),
    ],
)
def test_hostname_matching_rules(expected: str, sans: list[str], ok: bool) -> None:
    assert hostname_matches(expected, sans, []) is ok


def test_ip_matching_and_no_cn_fallback() -> None:
    assert hostname_matches("2001:db8::1", [], ["2001:db8:0::1"])
    assert not hostname_matches("10.0.0.1", ["10.0.0.1"], [])  # an IP needs an IP SAN


# --- files ----------------------------------------------------------------------------------


def test_der_and_pkcs7_bundles(pki: Pki) -> None:
    der = pki.write("leaf.der", pki.leaf.public_bytes(serialization.Encoding.DER))
    (r,) = check(der)
    assert r.problems == ()
    assert r.subject == "CN=www.example.org"
    p7 = pkcs7.serialize_certificates([pki.leaf, pki.intermediate], serialization.Encoding.DER)
    reports = check(pki.write("bundle.p7b", p7), trust_store=pki.store)
    assert len(reports) == 2
    assert all(r.problems == () for r in reports)
    p7pem = pkcs7.serialize_certificates([pki.leaf], serialization.Encoding.PEM)
    assert len(check(pki.write("bundle.p7c", p7pem))) == 1


def test_bundles_report_every_certificate_in_order(pki: Pki) -> None:
    old = pki.issue("old.example", not_after=NOW - DAY, not_before=NOW - 9 * DAY)
    soon = pki.issue("soon.example", not_after=NOW + 5 * DAY)
    reports = check(pki.write("bundle.pem", pem(pki.leaf, old, soon)))
    assert [r.index for r in reports] == [0, 1, 2]
    assert [r.problems for r in reports] == [(), (Problem.EXPIRED,), (Problem.EXPIRING_SOON,)]


def test_malformed_files_are_findings_not_crashes(pki: Pki) -> None:
    good = pem(pki.leaf)
    garbage_block = b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    cases = {
        "empty.pem": b"",
        "text.pem": b"hello, I am not a certificate\n",
        "junk.der": bytes(range(256)),
        "bad-block.pem": garbage_block,
        "no-cert.pem": key_pem(ec_key()),
    }
    for filename, data in cases.items():
        (r,) = check(pki.write(filename, data))
        assert r.problems == (Problem.MALFORMED,), filename
        assert report_to_proto(r).problems == [pb.CERTIFICATE_PROBLEM_MALFORMED]
        assert b"PRIVATE" not in r.details[0].encode()
    # A bad block among good ones: the good ones are still checked, positions kept.
    reports = check(pki.write("mixed.pem", good + garbage_block + good))
    assert [r.problems for r in reports] == [(), (Problem.MALFORMED,), ()]
    assert [r.index for r in reports] == [0, 1, 2]
    # A truncated last block.
    reports = check(pki.write("cut.pem", good + good[: len(good) // 2]))
    assert [r.problems for r in reports] == [(), (Problem.MALFORMED,)]
    assert "truncated" in reports[1].details[0]


def test_unreadable_files(pki: Pki, tmp_path: Path) -> None:
    (r,) = check(tmp_path / "absent.pem")
    assert r.problems == (Problem.UNREADABLE,)
    assert r.index == 0
    (r,) = check(tmp_path)
    assert r.problems == (Problem.UNREADABLE,)
    assert report_to_proto(r).problems == [pb.CERTIFICATE_PROBLEM_UNREADABLE]


# --- revocation wiring ----------------------------------------------------------------------


def test_revocation_results_become_problems(pki: Pki) -> None:
    asked: list[tuple[x509.Certificate, x509.Certificate | None]] = []

    def revoked(
        cert: x509.Certificate, issuer: x509.Certificate | None, config: RevocationConfig
    ) -> RevocationResult:
        asked.append((cert, issuer))
        return RevocationResult(
            RevocationState.REVOKED,
            RevocationMethod.CRL,
            "http://crl.example/test.crl",
            revocation_time=NOW - DAY,
            revocation_reason="keyCompromise",
            ocsp_error="OCSP: timed out",
        )

    checker = CertificateChecker(clock=lambda: NOW, revocation=revoked)
    path = pki.write("c.pem", pem(pki.leaf, pki.intermediate))
    leaf, inter = checker.check(
        WatchedCertificate(path, trust_store=pki.store, revocation=RevocationConfig())
    )
    # The leaf is checked with its issuer from the file; the CA certificate is not.
    assert asked == [(pki.leaf, pki.intermediate)]
    assert leaf.problems == (Problem.REVOKED,)
    assert leaf.severity is Severity.CRITICAL
    assert inter.revocation.state is RevocationState.NOT_CHECKED
    msg = report_to_proto(leaf)
    assert msg.revocation.state == pb.REVOCATION_STATE_REVOKED
    assert msg.revocation.method == pb.REVOCATION_METHOD_CRL
    assert msg.revocation.revocation_reason == "keyCompromise"
    assert "keyCompromise" in report_to_event(leaf).summary
    assert (
        checker.check(
            WatchedCertificate(path, revocation=RevocationConfig()), skip_revocation=True
        )[0].problems
        == ()
    )
