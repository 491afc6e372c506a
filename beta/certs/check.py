"""Checking watched certificate files: validity, chain, key, strength, names and revocation.

A watched file is PEM (one certificate, a chain or a bundle, PKCS#7 blocks too) or DER (one
certificate or a PKCS#7 bundle). Every certificate in it gets a report; a block that does not
parse is reported MALFORMED at its position and the others are still checked, and a file that
cannot be read is one UNREADABLE report: a bad file is a finding, never a crash. The configured
private key and the expected hostnames refer to the first certificate (the leaf of a chain file).

Chains are verified with `cryptography`'s verifier against the configured trust store, the other
certificates of the file serving as intermediates. Its web-PKI rules apply to CAs; for the
certificate itself any extensions are accepted (it may be a server, client or CA certificate).
A certificate outside its own validity is reported EXPIRED or NOT_YET_VALID and its chain is
not judged (it would fail for that reason alone); an expired intermediate still breaks the chain
of the certificates below it. Weak signatures are not flagged on trust anchors: nobody relies
on a root's self-signature. Revocation, when configured, is checked for end-entity certificates
(not CAs, not self-signed), with the issuer found among the file's certificates or the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import SignatureAlgorithmOID as Sig
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store
from cryptography.x509.verification import VerificationError as ChainError

from beta.certs.ocsp import (
    NOT_CHECKED,
    RevocationConfig,
    RevocationResult,
    RevocationState,
    check_revocation,
)
from beta.errors import BetaConfigError
from crypto.files import read_regular_capped

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PROBLEM_SEVERITY",
    "CertPolicy",
    "CertificateChecker",
    "CertificateReport",
    "ExpiryThreshold",
    "Problem",
    "Severity",
    "TrustStore",
    "WatchedCertificate",
    "check_certificate_file",
    "find_issuer",
    "hostname_matches",
    "key_description",
    "load_trust_store",
    "parse_certificates",
]

MAX_FILE_BYTES: Final = 4 * 1024 * 1024


class Problem(enum.Enum):
    EXPIRED = "expired"
    EXPIRING_SOON = "expiring-soon"
    NOT_YET_VALID = "not-yet-valid"
    CHAIN_INVALID = "chain-invalid"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"
    REVOCATION_UNAVAILABLE = "revocation-unavailable"
    KEY_MISMATCH = "key-mismatch"
    WEAK_KEY = "weak-key"
    WEAK_SIGNATURE = "weak-signature"
    HOSTNAME_MISMATCH = "hostname-mismatch"
    MALFORMED = "malformed"
    UNREADABLE = "unreadable"


class Severity(enum.IntEnum):
    """Same numbers as qsc.common.v1.Severity."""

    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5


# EXPIRING_SOON takes the severity of the threshold it crossed instead.
PROBLEM_SEVERITY: Final[Mapping[Problem, Severity]] = {
    Problem.EXPIRED: Severity.HIGH,
    Problem.EXPIRING_SOON: Severity.LOW,
    Problem.NOT_YET_VALID: Severity.MEDIUM,
    Problem.CHAIN_INVALID: Severity.HIGH,
    Problem.REVOKED: Severity.CRITICAL,
    Problem.REVOCATION_UNKNOWN: Severity.MEDIUM,
    Problem.REVOCATION_UNAVAILABLE: Severity.MEDIUM,
    Problem.KEY_MISMATCH: Severity.HIGH,
    Problem.WEAK_KEY: Severity.MEDIUM,
    Problem.WEAK_SIGNATURE: Severity.MEDIUM,
    Problem.HOSTNAME_MISMATCH: Severity.HIGH,
    Problem.MALFORMED: Severity.MEDIUM,
    Problem.UNREADABLE: Severity.MEDIUM,
}


@dataclass(frozen=True)
class ExpiryThreshold:
    days: int
    severity: Severity


DEFAULT_THRESHOLDS: Final = (
    ExpiryThreshold(30, Severity.LOW),
    ExpiryThreshold(14, Severity.MEDIUM),
    ExpiryThreshold(7, Severity.HIGH),
)


@dataclass(frozen=True)
class CertPolicy:
    thresholds: tuple[ExpiryThreshold, ...] = DEFAULT_THRESHOLDS
    min_rsa_bits: int = 2048
    min_dsa_bits: int = 2048
    # P-224 matches RSA-2048's 112-bit strength; smaller curves (P-192, sect163...) do not.
    min_ec_bits: int = 224
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)

    def __post_init__(self) -> None:
        if not self.thresholds or any(t.days <= 0 for t in self.thresholds):
            raise BetaConfigError("thresholds: need at least one, each a positive day count")
        if self.clock_skew < dt.timedelta(0):
            raise BetaConfigError("clock_skew: must not be negative")


@dataclass(frozen=True)
class WatchedCertificate:
    path: Path
    key_path: Path | None = None  # the first certificate's private key
    hostnames: tuple[str, ...] = ()  # names the first certificate must cover
    trust_store: Path | None = None  # None: the chain is not checked
    revocation: RevocationConfig | None = None  # None: revocation is not checked


@dataclass(frozen=True)
class CertificateReport:
    path: Path
    index: int
    problems: tuple[Problem, ...] = ()
    severity: Severity = Severity.INFO
    details: tuple[str, ...] = ()  # one human-readable line per problem
    subject: str = ""
    issuer: str = ""
    serial_number: str = ""  # hex
    sha256_fingerprint: bytes = b""
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    days_until_expiry: int = 0
    expiry_threshold_days: int = 0
    revocation: RevocationResult = NOT_CHECKED
    chain_error: str = ""
    key_algorithm: str = ""
    key_bits: int = 0
    signature_algorithm: str = ""
    subject_alt_names: tuple[str, ...] = ()
    missing_hostnames: tuple[str, ...] = ()


# --- reading files --------------------------------------------------------------------------

_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_CERT_TYPES: Final = (b"CERTIFICATE", b"X509 CERTIFICATE")
_BEGIN_CERT: Final = re.compile(rb"-----BEGIN (?:X509 )?CERTIFICATE-----")


def _read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    # A regular file only (a FIFO at a watched path must not hang the guardian); the OSError's
    # strerror says why not ("not a regular file", "larger than N bytes").
    return read_regular_capped(path, limit)


_Parsed = list[tuple[x509.Certificate | None, str]]  # (certificate, or why it is malformed)


def parse_certificates(data: bytes) -> _Parsed:
    """Every certificate in a PEM or DER file, in order; unparseable ones as (None, reason)."""
    out: _Parsed = []
    if b"-----BEGIN" in data:
        blocks = _PEM_BLOCK.findall(data)
        for match in _PEM_BLOCK.finditer(data):
            kind = match.group(1)
            try:
                if kind in _CERT_TYPES:
                    out.append((x509.load_pem_x509_certificate(match.group(0)), ""))
                elif kind == b"PKCS7":
                    out.extend((c, "") for c in pkcs7.load_pem_pkcs7_certificates(match.group(0)))
            except (ValueError, UnsupportedAlgorithm):
                out.append((None, f"PEM {kind.decode()} block #{len(out) + 1} does not parse"))
        cut = len(_BEGIN_CERT.findall(data)) - sum(1 for b in blocks if b[0] in _CERT_TYPES)
        if cut > 0:
            out.append((None, "a PEM certificate block has no END line (truncated file)"))
        if not out:
            out.append((None, "the PEM file holds no certificate"))
        return out
    try:
        return [(x509.load_der_x509_certificate(data), "")]
    except ValueError:
        pass
    try:
        return [(c, "") for c in pkcs7.load_der_pkcs7_certificates(data)]
    except (ValueError, UnsupportedAlgorithm):
        return [(None, "neither a PEM nor a DER certificate")]


@dataclass(frozen=True)
class TrustStore:
    path: Path
    certificates: tuple[x509.Certificate, ...]
    store: Store
    fingerprints: frozenset[bytes]

    def contains(self, cert: x509.Certificate) -> bool:
        return cert.fingerprint(hashes.SHA256()) in self.fingerprints


def load_trust_store(path: Path) -> TrustStore:
    """CA certificates from a PEM/DER file or a directory of them. BetaConfigError if it holds
    none or any file in it does not parse (a half-read store would give wrong verdicts)."""
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if path.is_dir()
        else [path]
    )
    certs: list[x509.Certificate] = []
    for f in files:
        try:
            parsed = parse_certificates(_read_limited(f))
        except OSError as exc:
            raise BetaConfigError(f"trust_store: {f}: {exc.strerror or exc}") from None
        bad = [why for c, why in parsed if c is None]
        if bad:
            raise BetaConfigError(f"trust_store: {f}: {bad[0]}")
        certs.extend(c for c, _ in parsed if c is not None)
    if not certs:
        raise BetaConfigError(f"trust_store: {path}: holds no certificate")
    return TrustStore(
        path, tuple(certs), Store(certs), frozenset(c.fingerprint(hashes.SHA256()) for c in certs)
    )


# --- single checks --------------------------------------------------------------------------

_CURVES: Final = {
    "secp192r1": "P-192",
    "secp224r1": "P-224",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}


def key_description(key: object) -> tuple[str, int]:
    """(algorithm, bits) as CertificateStatus shows them."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVES.get(key.curve.name, key.curve.name)}", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__.removeprefix("_").replace("PublicKey", ""), 0


def _weak_key(algorithm: str, bits: int, policy: CertPolicy) -> str | None:
    if algorithm == "RSA" and bits < policy.min_rsa_bits:
        return f"RSA key of {bits} bits (minimum {policy.min_rsa_bits})"
    if algorithm == "DSA" and bits < policy.min_dsa_bits:
        return f"DSA key of {bits} bits (minimum {policy.min_dsa_bits})"
    if algorithm.startswith("EC ") and bits < policy.min_ec_bits:
        return f"{algorithm} curve of {bits} bits (minimum {policy.min_ec_bits})"
    return None


_SIG_NAMES: Final = {
    Sig.RSA_WITH_MD5: "md5WithRSAEncryption",
    Sig.RSA_WITH_SHA1: "sha1WithRSAEncryption",
    Sig._RSA_WITH_SHA1: "sha1WithRSA",
    Sig.RSA_WITH_SHA224: "sha224WithRSAEncryption",
    Sig.RSA_WITH_SHA256: "sha256WithRSAEncryption",
    Sig.RSA_WITH_SHA384: "sha384WithRSAEncryption",
    Sig.RSA_WITH_SHA512: "sha512WithRSAEncryption",
    Sig.RSASSA_PSS: "RSASSA-PSS",
    Sig.ECDSA_WITH_SHA1: "ecdsa-with-SHA1",
    Sig.ECDSA_WITH_SHA224: "ecdsa-with-SHA224",
    Sig.ECDSA_WITH_SHA256: "ecdsa-with-SHA256",
    Sig.ECDSA_WITH_SHA384: "ecdsa-with-SHA384",
    Sig.ECDSA_WITH_SHA512: "ecdsa-with-SHA512",
    Sig.DSA_WITH_SHA1: "dsa-with-sha1",
    Sig.DSA_WITH_SHA256: "dsa-with-sha256",
    Sig.ED25519: "Ed25519",
    Sig.ED448: "Ed448",
}
# MD2, MD4, MD5 and SHA-1 based: collisions are practical (or close), so signatures can be forged.
_WEAK_SIG_OIDS: Final = {
    "1.2.840.113549.1.1.2": "MD2",
    "1.2.840.113549.1.1.3": "MD4",
    Sig.RSA_WITH_MD5.dotted_string: "MD5",
    Sig.RSA_WITH_SHA1.dotted_string: "SHA-1",
    Sig._RSA_WITH_SHA1.dotted_string: "SHA-1",
    Sig.ECDSA_WITH_SHA1.dotted_string: "SHA-1",
    Sig.DSA_WITH_SHA1.dotted_string: "SHA-1",
}


def _weak_signature(cert: x509.Certificate) -> str | None:
    weak = _WEAK_SIG_OIDS.get(cert.signature_algorithm_oid.dotted_string)
    if weak is None:
        try:  # RSASSA-PSS carries its hash in parameters
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            algorithm = None
        if isinstance(algorithm, hashes.SHA1):
            weak = "SHA-1"
        elif isinstance(algorithm, hashes.MD5):
            weak = "MD5"
    return f"signed with {weak}" if weak else None


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str], tuple[str, ...]]:
    """(DNS names, IP addresses, all SANs with type prefixes)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], ()
    dns = list(san.get_values_for_type(x509.DNSName))
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    emails = san.get_values_for_type(x509.RFC822Name)
    listed = (
        [f"DNS:{d}" for d in dns]
        + [f"IP:{i}" for i in ips]
        + [f"URI:{u}" for u in uris]
        + [f"email:{e}" for e in emails]
    )
    return dns, ips, tuple(listed)


def _normal_dns(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        with contextlib.suppress(UnicodeError):  # not IDNA-encodable: compare as given
            name = name.encode("idna").decode("ascii")
    return name


def hostname_matches(expected: str, dns_names: Sequence[str], ip_addresses: Sequence[str]) -> bool:
    """RFC 6125 matching against SANs only (no CN fallback): IPs exactly; DNS names case-
    insensitively, a wildcard only as the whole left-most label and matching exactly one label,
    never directly under a top-level domain."""
    try:
        ip = ipaddress.ip_address(expected.strip())
    except ValueError:
        pass
    else:
        return any(ipaddress.ip_address(a) == ip for a in ip_addresses)
    name = _normal_dns(expected)
    for pattern in (_normal_dns(d) for d in dns_names):
        if pattern == name:
            return True
        if pattern.startswith("*.") and pattern.count(".") >= 2:
            head, _, tail = name.partition(".")
            if head and tail == pattern[2:]:
                return True
    return False


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_problem(cert: x509.Certificate, key_path: Path) -> tuple[Problem, str] | None:
    try:
        data = _read_limited(key_path)
    except OSError as exc:
        return Problem.UNREADABLE, f"key file {key_path}: {exc.strerror or exc}"
    try:
        blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1).endswith(b"KEY")]
        if blocks:
            private = serialization.load_pem_private_key(blocks[0], password=None)
        else:
            private = serialization.load_der_private_key(data, password=None)
    except TypeError:
        return Problem.UNREADABLE, f"key file {key_path} is encrypted; cannot compare it"
    except (ValueError, UnsupportedAlgorithm):
        # Never echo the content: it is a secret.
        return Problem.UNREADABLE, f"key file {key_path} holds no readable private key"
    if _public_der(private.public_key()) != _public_der(cert.public_key()):
        return Problem.KEY_MISMATCH, f"key file {key_path} does not belong to this certificate"
    return None


def _chain_error(
    cert: x509.Certificate,
    intermediates: list[x509.Certificate],
    store: TrustStore,
    now: dt.datetime,
) -> str:
    if store.contains(cert):
        return ""  # a trust anchor
    # Within the clock-skew tolerance of notBefore, verify as of notBefore.
    at = min(max(now, cert.not_valid_before_utc), cert.not_valid_after_utc)
    builder = (
        PolicyBuilder()
        .store(store.store)
        .time(at)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
    )
    try:
        builder.build_client_verifier().verify(cert, intermediates)
    except ChainError as exc:
        # Drop the certificate repr cryptography appends: the report already names it.
        return re.sub(r"\s*\(encountered processing <Certificate\(.*\)>\)$", "", str(exc))
    except ValueError as exc:
        return str(exc)
    return ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def find_issuer(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate whose key signed `cert` (name match first, then the signature)."""
    for candidate in candidates:
        if candidate.subject != cert.issuer or candidate is cert:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue  # not this one
        return candidate
    return None


# --- the checker ----------------------------------------------------------------------------

RevocationCheck = Callable[
    [x509.Certificate, x509.Certificate | None, RevocationConfig], RevocationResult
]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _default_revocation(
    cert: x509.Certificate, issuer: x509.Certificate | None, config: RevocationConfig
) -> RevocationResult:
    return check_revocation(cert, issuer, config)


class CertificateChecker:
    """Checks watched files; keeps loaded trust stores until their file changes."""

    def __init__(
        self,
        policy: CertPolicy | None = None,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        revocation: RevocationCheck = _default_revocation,
    ) -> None:
        self.policy = policy or CertPolicy()
        self._clock = clock
        self._revocation = revocation
        self._stores: dict[Path, tuple[tuple[int, int, int], TrustStore]] = {}

    def trust_store(self, path: Path) -> TrustStore:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._stores.get(path)
        if cached is None or cached[0] != stamp or path.is_dir():
            cached = (stamp, load_trust_store(path))
            self._stores[path] = cached
        return cached[1]

    def check(
        self, watch: WatchedCertificate, *, skip_revocation: bool = False
    ) -> tuple[CertificateReport, ...]:
        """One report per certificate in the file, in file order."""
        now = self._clock()
        try:
            parsed = parse_certificates(_read_limited(watch.path))
        except OSError as exc:
            return (_problem_report(watch.path, 0, Problem.UNREADABLE, exc.strerror or str(exc)),)
        store: TrustStore | None = None
        store_error = ""
        if watch.trust_store is not None:
            try:
                store = self.trust_store(watch.trust_store)
            except OSError as exc:
                store_error = f"trust store {watch.trust_store}: {exc.strerror or exc}"
            except BetaConfigError as exc:
                store_error = str(exc)
        certs = [c for c, _ in parsed if c is not None]
        reports = []
        for index, (cert, why) in enumerate(parsed):
            if cert is None:
                reports.append(_problem_report(watch.path, index, Problem.MALFORMED, why))
                continue
            try:
                report = self._check_one(
                    watch, index, cert, certs, store, store_error, now, skip_revocation
                )
            except (ValueError, UnsupportedAlgorithm) as exc:
                # cryptography parses extensions and keys lazily: a bad one surfaces only here.
                report = _problem_report(watch.path, index, Problem.MALFORMED, str(exc))
            reports.append(report)
        return tuple(reports)

    def _check_one(
        self,
        watch: WatchedCertificate,
        index: int,
        cert: x509.Certificate,
        file_certs: list[x509.Certificate],
        store: TrustStore | None,
        store_error: str,
        now: dt.datetime,
        skip_revocation: bool,
    ) -> CertificateReport:
        policy = self.policy
        found: list[tuple[Problem, str, Severity]] = []

        def add(problem: Problem, detail: str, severity: Severity | None = None) -> None:
            found.append((problem, detail, severity or PROBLEM_SEVERITY[problem]))

        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        remaining = not_after - now
        days = remaining // dt.timedelta(days=1)
        threshold_days = 0
        if now > not_after:
            add(Problem.EXPIRED, f"expired {-days} days ago ({not_after:%Y-%m-%d})")
        elif now < not_before - policy.clock_skew:
            add(Problem.NOT_YET_VALID, f"not valid before {not_before:%Y-%m-%dT%H:%M:%SZ}")
        crossed = [t for t in policy.thresholds if remaining <= dt.timedelta(days=t.days)]
        if crossed and now <= not_after:
            nearest = min(crossed, key=lambda t: t.days)
            threshold_days = nearest.days
            add(
                Problem.EXPIRING_SOON,
                f"expires in {days} days ({not_after:%Y-%m-%d}), within {nearest.days}",
                max(t.severity for t in crossed),
            )
        algorithm, bits = key_description(cert.public_key())
        if (weak := _weak_key(algorithm, bits, policy)) is not None:
            add(Problem.WEAK_KEY, weak)
        anchor = store is not None and store.contains(cert)
        if not anchor and (weak := _weak_signature(cert)) is not None:
            add(Problem.WEAK_SIGNATURE, weak)
        chain_error = store_error
        in_validity = not_before - policy.clock_skew <= now <= not_after
        if store is not None and in_validity:
            others = [c for c in file_certs if c is not cert]
            chain_error = _chain_error(cert, others, store, now)
        if chain_error:
            add(Problem.CHAIN_INVALID, f"chain: {chain_error}")
        dns, ips, sans = _sans(cert)
        missing: tuple[str, ...] = ()
        if index == 0:
            if watch.key_path is not None and (kp := _key_problem(cert, watch.key_path)):
                add(*kp)
            missing = tuple(h for h in watch.hostnames if not hostname_matches(h, dns, ips))
            if missing:
                add(Problem.HOSTNAME_MISMATCH, f"does not cover {', '.join(missing)}")
        revocation = NOT_CHECKED
        self_signed = cert.issuer == cert.subject
        # Leaves only: OCSP for every CA of a bundle would be many requests for little value.
        wanted = watch.revocation is not None and not skip_revocation
        if wanted and not self_signed and not _is_ca(cert):
            assert watch.revocation is not None
            pool = [*file_certs, *(store.certificates if store else ())]
            revocation = self._revocation(cert, find_issuer(cert, pool), watch.revocation)
            _revocation_problem(revocation, add)
        return CertificateReport(
            path=watch.path,
            index=index,
            problems=tuple(dict.fromkeys(p for p, _, _ in found)),
            severity=max((s for _, _, s in found), default=Severity.INFO),
            details=tuple(d for _, d, _ in found),
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial_number=f"{cert.serial_number:x}",
            sha256_fingerprint=cert.fingerprint(hashes.SHA256()),
            not_before=not_before,
            not_after=not_after,
            days_until_expiry=days,
            expiry_threshold_days=threshold_days,
            revocation=revocation,
            chain_error=chain_error,
            key_algorithm=algorithm,
            key_bits=bits,
            signature_algorithm=_SIG_NAMES.get(
                cert.signature_algorithm_oid, cert.signature_algorithm_oid.dotted_string
            ),
            subject_alt_names=sans,
            missing_hostnames=missing,
        )


def _revocation_problem(result: RevocationResult, add: Callable[[Problem, str], None]) -> None:
    if result.state is RevocationState.REVOKED:
        when = f" at {result.revocation_time:%Y-%m-%dT%H:%M:%SZ}" if result.revocation_time else ""
        why = f" ({result.revocation_reason})" if result.revocation_reason else ""
        add(
            Problem.REVOKED,
            f"revoked{when}{why} per {result.method.value if result.method else '?'}",
        )
    elif result.state is RevocationState.UNKNOWN:
        add(Problem.REVOCATION_UNKNOWN, "the OCSP responder does not know this certificate")
    elif result.state is RevocationState.ERROR:
        add(Problem.REVOCATION_UNAVAILABLE, f"revocation not checked: {result.error}")


def _problem_report(path: Path, index: int, problem: Problem, detail: str) -> CertificateReport:
    return CertificateReport(
        path=path,
        index=index,
        problems=(problem,),
        severity=PROBLEM_SEVERITY[problem],
        details=(detail,),
    )


def check_certificate_file(
    watch: WatchedCertificate,
    policy: CertPolicy | None = None,
    *,
    now: dt.datetime | None = None,
    skip_revocation: bool = False,
) -> tuple[CertificateReport, ...]:
    """One-shot convenience over CertificateChecker."""
    at = now or _utcnow()
    checker = CertificateChecker(policy, clock=lambda: at)
    return checker.check(watch, skip_revocation=skip_revocation)
