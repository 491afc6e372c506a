"""The deployment PKI: CA and leaf contents, verification, identities, files and their modes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto import pki
from crypto.errors import PkiError, VerificationError

TD = "example.org"


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_ca(TD)


@pytest.fixture(scope="module")
def leaf(ca: pki.CertificateAuthority) -> pki.IssuedLeaf:
    return pki.issue_leaf(
        ca, "alpha", "web1.example.org", dns=["web1", "Web1.Internal"], ips=["10.0.0.5", "fd00::5"]
    )


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- certificate contents -------------------------------------------------------------------


def test_leaf_carries_spiffe_uri_dns_and_ip_sans(leaf: pki.IssuedLeaf) -> None:
    san = _san(leaf.cert)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/alpha/web1.example.org"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["web1.example.org", "web1", "web1.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::5"),
    ]


def test_ip_host_becomes_an_ip_san_not_a_dns_san(ca: pki.CertificateAuthority) -> None:
    leaf = pki.issue_leaf(ca, "cortex", "10.0.0.2", dns=["cortex.internal"], ips=["10.0.0.2"])
    san = _san(leaf.cert)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/cortex/10.0.0.2"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["cortex.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.2")]


def test_leaf_is_a_p256_tls_server_and_client_cert(
    ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf
) -> None:
    cert = leaf.cert
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not ku.value.key_encipherment
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key)
    assert cert.issuer == ca.cert.subject


def test_leaf_validity_defaults_to_90_days(leaf: pki.IssuedLeaf) -> None:
    lifetime = leaf.cert.not_valid_after_utc - leaf.cert.not_valid_before_utc
    assert dt.timedelta(days=90) <= lifetime <= dt.timedelta(days=90, minutes=6)
    assert not leaf.capped_by_ca


def test_leaf_validity_is_capped_by_the_ca_expiry() -> None:
    short_ca = pki.create_ca(TD, days=30)
    leaf = pki.issue_leaf(short_ca, "beta", "h1", days=90)
    assert leaf.capped_by_ca
    assert leaf.cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


def test_serials_are_random(ca: pki.CertificateAuthority) -> None:
    serials = {pki.issue_leaf(ca, "ml", "h1").cert.serial_number for _ in range(3)}
    assert len(serials) == 3
    assert all(s.bit_length() > 64 for s in serials)


def test_ca_is_a_p256_path_len_0_signing_ca_for_its_trust_domain(
    ca: pki.CertificateAuthority,
) -> None:
    cert = ca.cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    assert _san(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org"
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "QSC"
    assert TD in cert.subject.rfc4514_string()
    assert pki.ca_trust_domain(cert) == TD
    assert pki.key_type(cert) == "ECDSA P-256"
    assert "key=<hidden>" in repr(ca)


# --- verification ---------------------------------------------------------------------------


def test_leaf_verifies_against_its_ca(ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf) -> None:
    assert pki.verify_leaf(leaf.cert, ca.cert) == pki.Identity(TD, "alpha", "web1.example.org")


def test_leaf_does_not_verify_against_another_ca(leaf: pki.IssuedLeaf) -> None:
    other = pki.create_ca(TD)  # same trust domain, different key
    with pytest.raises(VerificationError):
        pki.verify_leaf(leaf.cert, other.cert)


def test_expired_and_not_yet_valid_leaves_are_refused(
    ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf
) -> None:
    for when in (
        leaf.cert.not_valid_after_utc + dt.timedelta(seconds=1),
        leaf.cert.not_valid_before_utc - dt.timedelta(seconds=1),
    ):
        with pytest.raises(VerificationError):
            pki.verify_leaf(leaf.cert, ca.cert, now=when)


def test_leaf_naming_another_trust_domain_is_refused(ca: pki.CertificateAuthority) -> None:
    # Signed by the right key, but claiming a trust domain the CA does not certify.
    impostor_ca = pki.CertificateAuthority(cert=ca.cert, key=ca.key, trust_domain="evil.org")
    leaf = pki.issue_leaf(impostor_ca, "cortex", "h1")
    with pytest.raises(VerificationError):
        pki.verify_leaf(leaf.cert, ca.cert)


def test_ca_cert_is_not_accepted_as_a_leaf(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(VerificationError):
        pki.verify_leaf(ca.cert, ca.cert)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_accepts_the_leaf_for_tls_server_and_client(
    tmp_path: Path, ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf
) -> None:
    files = pki.write_leaf(leaf, tmp_path, ca.cert)
    for purpose in ("sslserver", "sslclient"):
        out = subprocess.run(
            ["openssl", "verify", "-CAfile", files.ca_cert, "-purpose", purpose, files.cert],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    other = tmp_path / "other-ca.crt"
    other.write_bytes(pki.create_ca(TD).cert.public_bytes(serialization.Encoding.PEM))
    refused = subprocess.run(
        ["openssl", "verify", "-CAfile", other, files.cert], capture_output=True, check=False
    )
    assert refused.returncode != 0


def test_mutual_tls13_handshake_with_issued_certificates(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    server_files = pki.write_leaf(pki.issue_leaf(ca, "alpha", "localhost"), tmp_path, ca.cert)
    client_files = pki.write_leaf(pki.issue_leaf(ca, "cortex", "central"), tmp_path, ca.cert)

    def context(purpose: ssl.Purpose, files: pki.LeafFiles) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cafile=str(files.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(files.cert, files.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    server_ctx = context(ssl.Purpose.CLIENT_AUTH, server_files)
    client_ctx = context(ssl.Purpose.SERVER_AUTH, client_files)
    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                seen["client"] = pki.parse_identity(x509.load_der_x509_certificate(der))
                seen["version"] = tls.version()

        thread = threading.Thread(target=serve)
        thread.start()
        port = listener.getsockname()[1]
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            server_id = pki.parse_identity(x509.load_der_x509_certificate(der))
        thread.join(timeout=10)
    assert server_id == pki.Identity(TD, "alpha", "localhost")
    assert seen == {"client": pki.Identity(TD, "cortex", "central"), "version": "TLSv1.3"}


# --- identities and names -------------------------------------------------------------------


def test_parse_identity_reads_role_host_and_trust_domain(leaf: pki.IssuedLeaf) -> None:
    identity = pki.parse_identity(leaf.cert)
    assert identity == pki.Identity("example.org", "alpha", "web1.example.org")
    assert identity.spiffe_id == "spiffe://example.org/alpha/web1.example.org"
    with pytest.raises(AttributeError):
        identity.role = "cortex"  # type: ignore[misc]


def _cert_with_sans(ca: pki.CertificateAuthority, sans: list[x509.GeneralName]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["spiffe://example.org/alpha/h1", "spiffe://example.org/beta/h1"],
        ["spiffe://example.org/wizard/h1"],
        ["https://example.org/alpha/h1"],
    ],
    ids=["no-uri", "two-uris", "unknown-role", "not-spiffe"],
)
def test_parse_identity_refuses_certs_without_exactly_one_valid_spiffe_uri(
    ca: pki.CertificateAuthority, uris: list[str]
) -> None:
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    cert = _cert_with_sans(ca, [*sans, x509.DNSName("h1")])
    with pytest.raises(PkiError):
        pki.parse_identity(cert)


def test_parse_identity_refuses_cert_without_sans(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="0 URI SANs"):
        pki.parse_identity(_cert_with_sans(ca, []))


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/alpha",
        "spiffe://example.org/alpha/h1/extra",
        "spiffe://Example.org/alpha/h1",
        "spiffe://example.org:443/alpha/h1",
        "spiffe://user@example.org/alpha/h1",
        "spiffe://example.org/alpha/h1?x=1",
        "spiffe://example.org/alpha/h1#frag",
        "spiffe://example.org/alpha/H1",
        "spiffe://example.org//h1",
        "spiffe:///alpha/h1",
    ],
)
def test_malformed_spiffe_ids_are_refused(uri: str) -> None:
    with pytest.raises(PkiError):
        pki.parse_spiffe_id(uri)


def test_unknown_role_error_lists_the_valid_roles(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(PkiError) as err:
        pki.issue_leaf(ca, "wizard", "h1")
    assert "'wizard'" in str(err.value)
    assert "alpha, beta, cortex, ml, soar, operator" in str(err.value)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "bad_host",
        "-h1",
        "h1-",
        "a..b",
        "a" * 64,
        "10.0.0",
        "h 1",
        "h1/x",
        "ü.org",
        "10.000.0.1",
    ],
)
def test_bad_hosts_are_refused(ca: pki.CertificateAuthority, host: str) -> None:
    with pytest.raises(PkiError, match="host"):
        pki.issue_leaf(ca, "beta", host)


def test_ipv6_host_is_refused_with_a_hint(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="--ip"):
        pki.issue_leaf(ca, "beta", "fd00::1")


def test_hosts_are_normalized() -> None:
    assert pki.normalize_host("Web1.Example.ORG.") == "web1.example.org"
    assert pki.normalize_host("10.0.0.1") == "10.0.0.1"
    assert pki.normalize_host("localhost") == "localhost"


@pytest.mark.parametrize(
    "td", ["", "Example.org", "ex_ample.org", "-x.org", "a..b", "x" * 64, "spiffe://x"]
)
def test_bad_trust_domains_are_refused(td: str) -> None:
    with pytest.raises(PkiError, match="trust domain"):
        pki.create_ca(td)


def test_bad_extra_sans_are_refused(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="not an IPv4 or IPv6 address"):
        pki.issue_leaf(ca, "beta", "h1", ips=["10.0.0.256"])
    with pytest.raises(PkiError, match="--ip"):
        pki.issue_leaf(ca, "beta", "h1", dns=["10.0.0.1"])


# --- files ----------------------------------------------------------------------------------


def test_init_ca_writes_a_0600_key_and_refuses_to_overwrite(tmp_path: Path, umask0: None) -> None:
    ca_dir = tmp_path / "pki"
    ca = pki.init_ca(ca_dir, TD)
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(ca_dir / "ca.crt") == 0o644
    assert _mode(ca_dir) == 0o700
    before = (ca_dir / "ca.key").read_bytes(), (ca_dir / "ca.crt").read_bytes()
    with pytest.raises(PkiError, match="already exists; refusing to overwrite a CA"):
        pki.init_ca(ca_dir, "other.org")
    assert ((ca_dir / "ca.key").read_bytes(), (ca_dir / "ca.crt").read_bytes()) == before
    loaded = pki.load_ca(ca_dir)
    assert loaded.trust_domain == TD
    assert loaded.cert == ca.cert


def test_write_leaf_writes_0600_key_cert_and_ca(
    tmp_path: Path, ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf, umask0: None
) -> None:
    out = tmp_path / "out"
    files = pki.write_leaf(leaf, out, ca.cert)
    assert files.cert == out / "alpha-web1.example.org.crt"
    assert files.key == out / "alpha-web1.example.org.key"
    assert _mode(files.key) == 0o600
    assert files.ca_cert.read_bytes() == ca.cert.public_bytes(serialization.Encoding.PEM)
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert key.public_key() == x509.load_pem_x509_certificate(files.cert.read_bytes()).public_key()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_write_leaf_refuses_to_overwrite_without_force(
    tmp_path: Path, ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf
) -> None:
    files = pki.write_leaf(leaf, tmp_path, ca.cert)
    old_key = files.key.read_bytes()
    newer = pki.issue_leaf(ca, "alpha", "web1.example.org")
    with pytest.raises(PkiError, match="--force"):
        pki.write_leaf(newer, tmp_path, ca.cert)
    assert files.key.read_bytes() == old_key
    pki.write_leaf(newer, tmp_path, ca.cert, overwrite=True)
    assert files.key.read_bytes() != old_key
    assert _mode(files.key) == 0o600


def test_write_leaf_refuses_an_out_dir_holding_another_ca(
    tmp_path: Path, ca: pki.CertificateAuthority, leaf: pki.IssuedLeaf
) -> None:
    (tmp_path / "ca.crt").write_bytes(
        pki.create_ca(TD).cert.public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(PkiError, match="different CA"):
        pki.write_leaf(leaf, tmp_path, ca.cert)


def test_load_ca_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"does not exist.*qsc pki init"):
        pki.load_ca(tmp_path / "missing")
    with pytest.raises(PkiError, match="holds no CA"):
        pki.load_ca(tmp_path)
    pki.init_ca(tmp_path / "pki", TD)
    key_path = tmp_path / "pki" / "ca.key"
    key_path.chmod(0o644)
    with pytest.raises(PkiError, match=rf"0644.*chmod 600 {key_path}"):
        pki.load_ca(tmp_path / "pki")
    key_path.chmod(0o600)
    other_key = pki.create_ca(TD).key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(other_key)
    with pytest.raises(PkiError, match="does not belong"):
        pki.load_ca(tmp_path / "pki")
    key_path.write_bytes(b"garbage")
    with pytest.raises(PkiError, match="not a readable PEM private key"):
        pki.load_ca(tmp_path / "pki")
    key_path.unlink()
    with pytest.raises(PkiError, match="no such file"):
        pki.load_ca(tmp_path / "pki")


def test_load_certificate_never_echoes_a_key_file(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, TD)
    key_pem = (tmp_path / "ca.key").read_text()
    with pytest.raises(PkiError) as err:
        pki.load_certificate(tmp_path / "ca.key")
    assert "no readable certificate" in str(err.value)
    assert key_pem.splitlines()[1] not in str(err.value)


# --- describing -----------------------------------------------------------------------------


def test_describe_reports_identity_validity_and_fingerprint(leaf: pki.IssuedLeaf) -> None:
    now = leaf.cert.not_valid_before_utc + dt.timedelta(days=10)
    info = pki.describe(leaf.cert, now=now)
    assert info.identity == pki.Identity(TD, "alpha", "web1.example.org")
    assert info.trust_domain == TD
    assert not info.is_ca
    assert info.days_left in (79, 80)
    assert not info.expired
    assert info.key_type == "ECDSA P-256"
    assert info.extended_key_usage == ("serverAuth", "clientAuth")
    assert info.fingerprint_sha256 == leaf.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    doc = info.to_json()
    assert (doc["role"], doc["host"], doc["trust_domain"]) == ("alpha", "web1.example.org", TD)
    assert doc["ip_addresses"] == ["10.0.0.5", "fd00::5"]


def test_describe_a_foreign_cert_shows_no_identity(ca: pki.CertificateAuthority) -> None:
    info = pki.describe(_cert_with_sans(ca, [x509.DNSName("x.example.com")]))
    assert info.identity is None
    assert info.trust_domain is None
    assert info.dns_names == ("x.example.com",)
