"""The deployment PKI: one ECDSA P-256 CA per trust domain, one leaf per component instance.

A leaf names its holder with exactly one URI SAN, `spiffe://<trust-domain>/<role>/<host>`, which
the mesh parses into an `Identity` for authorization. The CA records its trust domain as the URI
SAN `spiffe://<trust-domain>`; `verify_leaf` requires the leaf's trust domain to match it.

The CA carries no URI name constraints on purpose: `cryptography`'s verifier rejects every
certificate under a CA with URI name constraints ("unsupported name constraint"), and the mesh
verifies peer certificates with it. The trust-domain check in `verify_leaf` does that job.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from cryptography.x509.verification import VerificationError as _X509VerificationError

from crypto.errors import KeyFileError, PkiError, VerificationError
from crypto.files import PRIVATE_MODE, PUBLIC_MODE, make_private_dirs, write_file_atomic
from crypto.keyfile import read_private_file

ROLES: Final = ("alpha", "beta", "cortex", "ml", "soar", "operator")
CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
DEFAULT_CA_DAYS: Final = 3650
DEFAULT_LEAF_DAYS: Final = 90
MAX_DAYS: Final = 36500
# Backdate notBefore a little so a peer whose clock runs slightly behind accepts a fresh cert.
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
# The trust domain goes into the CA subject's OU, which X.509 caps at 64 characters.
MAX_TRUST_DOMAIN_LEN: Final = 63

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class Identity:
    """Who a leaf certificate names: `spiffe://<trust_domain>/<role>/<host>`."""

    trust_domain: str
    role: str
    host: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.role}/{self.host}"

    def __str__(self) -> str:
        return self.spiffe_id


@dataclass(frozen=True, repr=False)
class CertificateAuthority:
    """A loaded CA: its certificate, its private key and the trust domain it certifies."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str

    def __repr__(self) -> str:
        return f"CertificateAuthority(trust_domain={self.trust_domain!r}, key=<hidden>)"


@dataclass(frozen=True, repr=False)
class IssuedLeaf:
    """A freshly issued leaf; `capped_by_ca` is set when the CA's expiry shortened it."""

    identity: Identity
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    capped_by_ca: bool

    def __repr__(self) -> str:
        return f"IssuedLeaf(identity={self.identity.spiffe_id!r}, key=<hidden>)"


@dataclass(frozen=True)
class LeafFiles:
    cert: Path
    key: Path
    ca_cert: Path


# --- names ----------------------------------------------------------------------------------


def validate_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` if it is a lowercase DNS-style name, else raise PkiError."""
    if not trust_domain:
        raise PkiError("trust domain is empty; use a lowercase DNS-style name like example.org")
    if trust_domain != trust_domain.lower():
        raise PkiError(f"trust domain {trust_domain!r} must be lowercase")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LEN or not _DNS_NAME_RE.fullmatch(trust_domain):
        raise PkiError(
            f"trust domain {trust_domain!r} is not valid: use dot-separated labels of a-z, 0-9 "
            f"and '-' (not at a label's ends), at most {MAX_TRUST_DOMAIN_LEN} characters"
        )
    return trust_domain


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    return role


def normalize_host(host: str) -> str:
    """Lowercase a DNS host name or canonicalize an IPv4 address; raise PkiError otherwise.

    IPv6 addresses are refused: ':' may not appear in a SPIFFE ID path segment. Name such a host
    and pass the address as an extra IP SAN instead.
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if addr.version == 6:
            raise PkiError(
                f"host {host!r} is an IPv6 address, which cannot appear in a SPIFFE ID; "
                "give the host a name and pass the address with --ip"
            )
        return str(addr)
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not _DNS_NAME_RE.fullmatch(name):
        raise PkiError(
            f"host {host!r} is not a valid host name or IPv4 address: use dot-separated labels "
            "of a-z, 0-9 and '-' (not at a label's ends)"
        )
    if name.rsplit(".", 1)[-1].isdigit():
        raise PkiError(f"host {host!r} looks like an IP address but is not a valid one")
    return name


def normalize_dns_name(name: str) -> str:
    normalized = normalize_host(name)
    if _is_ip(normalized):
        raise PkiError(f"DNS name {name!r} is an IP address; pass it with --ip instead")
    return normalized


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PkiError(f"{text!r} is not an IPv4 or IPv6 address") from None


def spiffe_id(trust_domain: str, role: str, host: str) -> str:
    return Identity(trust_domain, role, host).spiffe_id


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- issuing --------------------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise PkiError(f"validity of {days} days is out of range (1..{MAX_DAYS})")


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    trust_domain: str, *, days: int = DEFAULT_CA_DAYS, now: dt.datetime | None = None
) -> CertificateAuthority:
    """Make a new self-signed CA for `trust_domain` (in memory; see `init_ca` for files)."""
    validate_trust_domain(trust_domain)
    _check_days(days)
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QSC"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "QSC deployment CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key, trust_domain=trust_domain)


def issue_leaf(
    ca: CertificateAuthority,
    role: str,
    host: str,
    *,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int = DEFAULT_LEAF_DAYS,
    now: dt.datetime | None = None,
) -> IssuedLeaf:
    """Issue a leaf for one component instance; every component is both TLS server and client."""
    validate_role(role)
    host = normalize_host(host)
    _check_days(days)
    now = now or _utcnow()
    ca_expiry = ca.cert.not_valid_after_utc
    if ca_expiry <= now:
        raise PkiError(f"the CA expired on {ca_expiry:%Y-%m-%d}; create a new CA")

    dns_names = _unique([host] if not _is_ip(host) else [], (normalize_dns_name(n) for n in dns))
    ip_addrs = _unique(
        [ipaddress.ip_address(host)] if _is_ip(host) else [], (parse_ip(a) for a in ips)
    )
    identity = Identity(ca.trust_domain, role, host)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.spiffe_id)]
    sans += [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(a) for a in ip_addrs]

    not_after = now + dt.timedelta(days=days)
    capped = not_after > ca_expiry
    not_after = min(not_after, ca_expiry)

    subject = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "QSC"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
    ]
    if len(host) <= 64:  # X.509 caps CN at 64; the SANs carry the full name anyway
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, host))
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedLeaf(identity=identity, cert=cert, key=key, capped_by_ca=capped)


_T = TypeVar("_T")


def _unique(first: Iterable[_T], rest: Iterable[_T]) -> list[_T]:
    seen: list[_T] = []
    for item in (*first, *rest):
        if item not in seen:
            seen.append(item)
    return seen


# --- files ----------------------------------------------------------------------------------


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_ca(
    directory: Path, trust_domain: str, *, days: int = DEFAULT_CA_DAYS
) -> CertificateAuthority:
    """Create a CA in `directory` (made 0700 if missing); refuse to replace an existing one."""
    ca = create_ca(trust_domain, days=days)
    if directory.exists() and not directory.is_dir():
        raise PkiError(f"{directory} exists and is not a directory")
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(
                f"{path} already exists; refusing to overwrite a CA (every certificate it "
                "issued would stop verifying). Use another --dir"
            )
    try:
        make_private_dirs(directory)
        # Key first: a crash in between leaves no ca.crt, so nothing trusts a keyless CA.
        write_file_atomic(key_path, _pem_key(ca.key), mode=PRIVATE_MODE)
        write_file_atomic(cert_path, _pem_cert(ca.cert), mode=PUBLIC_MODE)
    except FileExistsError as exc:
        raise PkiError(f"{exc.filename} already exists; refusing to overwrite a CA") from None
    except OSError as exc:
        raise PkiError(f"cannot write the CA into {directory}: {exc.strerror}") from None
    return ca


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Read every certificate in a PEM (or one in a DER) file; PkiError names the path."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PkiError(f"{path}: is a directory, not a certificate file") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        # Never echo the content: the user may have pointed us at a private key.
        raise PkiError(f"{path}: contains no readable certificate (PEM or DER)") from None


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate in `path` (the leaf, in a chain file)."""
    return load_certificates(path)[0]


def load_ca(directory: Path) -> CertificateAuthority:
    """Load the CA in `directory`, checking the key is private and belongs to the certificate."""
    if not directory.is_dir():
        raise PkiError(
            f"CA directory {directory} does not exist; create a CA with "
            f"`qsc pki init --dir {directory} --trust-domain TD`"
        )
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists():
        raise PkiError(
            f"{cert_path} not found: {directory} holds no CA; create one with "
            f"`qsc pki init --dir {directory} --trust-domain TD`"
        )
    cert = load_certificate(cert_path)
    trust_domain = ca_trust_domain(cert)
    try:
        key_pem = read_private_file(key_path, what="CA key")
    except KeyFileError as exc:
        raise PkiError(str(exc)) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise PkiError(
            f"CA key {key_path} is passphrase-protected, which is not supported"
        ) from None
    except ValueError:
        raise PkiError(f"CA key {key_path} is not a readable PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"CA key {key_path} does not belong to {cert_path}")
    return CertificateAuthority(cert=cert, key=key, trust_domain=trust_domain)


def write_leaf(
    leaf: IssuedLeaf, out_dir: Path, ca_cert: x509.Certificate, *, overwrite: bool = False
) -> LeafFiles:
    """Write ROLE-HOST.crt, ROLE-HOST.key (0600) and ca.crt into `out_dir`."""
    stem = f"{leaf.identity.role}-{leaf.identity.host}"
    files = LeafFiles(
        cert=out_dir / f"{stem}.crt", key=out_dir / f"{stem}.key", ca_cert=out_dir / CA_CERT_FILE
    )
    ca_pem = _pem_cert(ca_cert)
    if not overwrite:
        for path in (files.cert, files.key):
            if path.exists():
                raise PkiError(f"{path} already exists; pass --force to replace it")
    if files.ca_cert.exists() and files.ca_cert.read_bytes().strip() != ca_pem.strip():
        raise PkiError(f"{files.ca_cert} holds a different CA certificate; use another --out-dir")
    try:
        make_private_dirs(out_dir)
        write_file_atomic(files.key, _pem_key(leaf.key), mode=PRIVATE_MODE, overwrite=overwrite)
        write_file_atomic(files.cert, _pem_cert(leaf.cert), mode=PUBLIC_MODE, overwrite=overwrite)
        if not files.ca_cert.exists():
            write_file_atomic(files.ca_cert, ca_pem, mode=PUBLIC_MODE)
    except FileExistsError as exc:
        raise PkiError(f"{exc.filename} already exists; pass --force to replace it") from None
    except OSError as exc:
        raise PkiError(f"cannot write into {out_dir}: {exc.strerror}") from None
    return files


# --- reading identities ---------------------------------------------------------------------


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def ca_trust_domain(cert: x509.Certificate) -> str:
    """The trust domain a QSC CA certificate certifies (its `spiffe://TD` URI SAN)."""
    uris = _uris(cert)
    if not _is_ca(cert) or len(uris) != 1:
        raise PkiError("not a QSC CA certificate (needs CA:true and one spiffe://TD URI SAN)")
    parts = urlsplit(uris[0])
    if parts.scheme != "spiffe" or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise PkiError("not a QSC CA certificate (its URI SAN is not spiffe://TD)")
    return validate_trust_domain(parts.netloc)


def parse_identity(cert: x509.Certificate) -> Identity:
    """The identity a leaf names; PkiError unless it has exactly one valid QSC SPIFFE URI."""
    uris = _uris(cert)
    if len(uris) != 1:
        raise PkiError(f"certificate has {len(uris)} URI SANs; a QSC identity has exactly one")
    return parse_spiffe_id(uris[0])


def parse_spiffe_id(uri: str) -> Identity:
    """Parse `spiffe://TD/ROLE/HOST` strictly (no port, user, query, fragment or extra path)."""
    parts = urlsplit(uri)
    segments = parts.path.split("/")
    if (
        parts.scheme != "spiffe"
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or ":" in parts.netloc
        or len(segments) != 3
        or segments[0] != ""
    ):
        raise PkiError(f"{uri!r} is not a QSC SPIFFE ID (spiffe://TRUST-DOMAIN/ROLE/HOST)")
    trust_domain = validate_trust_domain(parts.netloc)
    role = validate_role(segments[1])
    host = segments[2]
    if normalize_host(host) != host:
        raise PkiError(f"{uri!r} names host {host!r}, which is not in canonical form")
    return Identity(trust_domain, role, host)


def verify_leaf(
    cert: x509.Certificate, ca_cert: x509.Certificate, *, now: dt.datetime | None = None
) -> Identity:
    """Check `cert` chains to `ca_cert` (signature, validity, extensions, same trust domain).

    Returns the leaf's identity. Every failure raises the one opaque VerificationError; callers
    that want to tell an operator why can look at the certificate with `describe`.
    """
    try:
        trust_domain = ca_trust_domain(ca_cert)
        verifier = (
            PolicyBuilder().store(Store([ca_cert])).time(now or _utcnow()).build_client_verifier()
        )
        verifier.verify(cert, [])
        identity = parse_identity(cert)
    except (_X509VerificationError, PkiError):
        raise VerificationError() from None
    if identity.trust_domain != trust_domain:
        raise VerificationError()
    return identity


# --- describing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateInfo:
    """What `qsc pki show` prints about a certificate."""

    subject: str
    issuer: str
    serial: str
    is_ca: bool
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    identity: Identity | None
    trust_domain: str | None
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: int
    expired: bool
    key_type: str
    fingerprint_sha256: str
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "is_ca": self.is_ca,
            "uris": list(self.uris),
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "trust_domain": self.trust_domain,
            "role": self.identity.role if self.identity else None,
            "host": self.identity.host if self.identity else None,
            "spiffe_id": self.identity.spiffe_id if self.identity else None,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": self.days_left,
            "expired": self.expired,
            "key_type": self.key_type,
            "fingerprint_sha256": self.fingerprint_sha256,
            "key_usage": list(self.key_usage),
            "extended_key_usage": list(self.extended_key_usage),
        }


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curve.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


_KEY_USAGE_NAMES: Final = (
    ("digital_signature", "digitalSignature"),
    ("content_commitment", "contentCommitment"),
    ("key_encipherment", "keyEncipherment"),
    ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"),
    ("key_cert_sign", "keyCertSign"),
    ("crl_sign", "cRLSign"),
)


def _key_usage_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(label for attr, label in _KEY_USAGE_NAMES if getattr(ku, attr))


_EKU_NAMES: Final = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def _eku_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)


def _sans(cert: x509.Certificate) -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], []
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
        [str(a) for a in san.get_values_for_type(x509.IPAddress)],
    )


def describe(cert: x509.Certificate, *, now: dt.datetime | None = None) -> CertificateInfo:
    now = now or _utcnow()
    uris, dns_names, ips = _sans(cert)
    is_ca = _is_ca(cert)
    identity: Identity | None = None
    trust_domain: str | None = None
    try:
        if is_ca:
            trust_domain = ca_trust_domain(cert)
        else:
            identity = parse_identity(cert)
            trust_domain = identity.trust_domain
    except PkiError:
        pass  # not a QSC certificate: show what it has
    not_after = cert.not_valid_after_utc
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        is_ca=is_ca,
        uris=tuple(uris),
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ips),
        identity=identity,
        trust_domain=trust_domain,
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        days_left=(not_after - now).days,
        expired=not_after <= now,
        key_type=key_type(cert),
        fingerprint_sha256=fingerprint_sha256(cert),
        key_usage=_key_usage_names(cert),
        extended_key_usage=_eku_names(cert),
    )
