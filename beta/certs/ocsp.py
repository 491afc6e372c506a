"""Revocation checking: OCSP with a nonce, and a CRL fallback when OCSP gives no trustworthy answer.

OCSP (RFC 6960): a request for one CertID (SHA-1, what responders universally index by) with a
fresh 32-byte nonce (RFC 8954) is POSTed to the configured responder or the certificate's AIA
OCSP URL. An answer counts only if it is SUCCESSFUL, signed by the issuer itself or by a delegated
responder the issuer certified for OCSP signing (EKU id-kp-OCSPSigning, valid now), carries our
nonce (compared in constant time), has a SingleResponse for exactly our CertID, and is fresh:
thisUpdate not in the future and nextUpdate not past, both with `clock_skew` tolerance (without a
nextUpdate, thisUpdate no older than `max_age`). GOOD, REVOKED and UNKNOWN are answers; everything
else (no URL, unreachable, timeout, HTTP error, malformed, responder error, bad signature, nonce
missing or wrong, stale) is an ERROR with the reason, and then the CRL is tried.

CRL (RFC 5280): from the configured URL or file, else the certificate's CRL distribution points.
It must be a full CRL (no delta) issued and signed by the issuer (cRLSign if KeyUsage is present)
and fresh by the same rules; the serial is then looked up. Indirect CRLs and delegated CRL signers
are not supported (reported as a bad signature). When the CRL answers, the result says
`method=CRL` and keeps the OCSP failure in `ocsp_error`, so the fallback is visible.

HTTP is plain stdlib: one request, a total deadline of about `timeout`, a size cap on the body.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hmac
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from crypto.files import FileTooLargeError, read_regular_capped

__all__ = [
    "RevocationConfig",
    "RevocationErrorKind",
    "RevocationMethod",
    "RevocationResult",
    "RevocationState",
    "check_crl",
    "check_ocsp",
    "check_revocation",
]

NONCE_SIZE: Final = 32
_READ_CHUNK: Final = 64 * 1024
_OCSP_REQUEST_TYPE: Final = "application/ocsp-request"
_OCSP_RESPONSE_TYPE: Final = "application/ocsp-response"


class RevocationState(enum.Enum):
    NOT_CHECKED = "not-checked"
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    ERROR = "error"


class RevocationMethod(enum.Enum):
    OCSP = "ocsp"
    CRL = "crl"


class RevocationErrorKind(enum.Enum):
    NO_SOURCE = "no-source"  # no OCSP URL / CRL distribution point, none configured
    UNREACHABLE = "unreachable"  # connection refused, timeout, DNS, HTTP error status
    MALFORMED = "malformed"
    RESPONDER_ERROR = "responder-error"  # OCSP status other than successful
    BAD_SIGNATURE = "bad-signature"  # or signed by someone not allowed to
    NONCE_MISMATCH = "nonce-mismatch"  # missing or different nonce
    CERT_ID_MISMATCH = "cert-id-mismatch"  # the answer is about another certificate
    STALE = "stale"  # nextUpdate past (or too old without one)
    NOT_YET_VALID = "not-yet-valid"  # thisUpdate in the future
    NO_ISSUER = "no-issuer"  # the issuer certificate is not available


@dataclass(frozen=True)
class RevocationConfig:
    """How to check revocation for one certificate (or a default for all)."""

    ocsp_url: str | None = None  # overrides the certificate's AIA OCSP URL
    crl_url: str | None = None  # http(s) URL or local file; overrides the CRL DPs
    timeout: float = 5.0  # seconds, per request, total
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)
    max_age: dt.timedelta = dt.timedelta(days=7)  # for answers without nextUpdate
    require_nonce: bool = True
    crl_fallback: bool = True
    use_env_proxy: bool = True  # honour http_proxy / no_proxy
    max_response_bytes: int = 1024 * 1024
    max_crl_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if self.clock_skew < dt.timedelta(0) or self.max_age <= dt.timedelta(0):
            raise ValueError("clock_skew must not be negative and max_age must be positive")


@dataclass(frozen=True)
class RevocationResult:
    state: RevocationState
    method: RevocationMethod | None = None
    url: str = ""
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    revocation_time: dt.datetime | None = None
    revocation_reason: str = ""
    error: str = ""  # for ERROR: why no trustworthy answer was had
    error_kind: RevocationErrorKind | None = None
    ocsp_error: str = ""  # set when the CRL fallback answered: why OCSP did not

    @property
    def fallback_used(self) -> bool:
        return self.method is RevocationMethod.CRL and bool(self.ocsp_error)


NOT_CHECKED: Final = RevocationResult(RevocationState.NOT_CHECKED)


class _AnswerError(Exception):
    """Internal: one check failed for `kind`; becomes an ERROR result."""

    def __init__(self, kind: RevocationErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- transport ------------------------------------------------------------------------------


def _fetch(url: str, config: RevocationConfig, limit: int, body: bytes | None = None) -> bytes:
    scheme = url.partition(":")[0].lower()
    if scheme not in ("http", "https"):
        raise _AnswerError(RevocationErrorKind.NO_SOURCE, f"unsupported URL scheme in {url!r}")
    headers = {"Accept": _OCSP_RESPONSE_TYPE} if body is not None else {}
    if body is not None:
        headers["Content-Type"] = _OCSP_REQUEST_TYPE
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, headers=headers, method="POST" if body is not None else "GET"
    )
    handlers = [] if config.use_env_proxy else [urllib.request.ProxyHandler({})]
    opener = urllib.request.build_opener(*handlers)
    deadline = time.monotonic() + config.timeout
    try:
        with opener.open(request, timeout=config.timeout) as response:
            chunks: list[bytes] = []
            size = 0
            # read1: whatever has arrived, so a trickling server cannot stretch the deadline.
            while chunk := response.read1(_READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _AnswerError(RevocationErrorKind.MALFORMED, f"answer over {limit} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise _AnswerError(RevocationErrorKind.UNREACHABLE, f"HTTP {exc.code} from {url}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        what = "timed out" if isinstance(reason, TimeoutError) else str(reason)
        raise _AnswerError(RevocationErrorKind.UNREACHABLE, f"{url}: {what}") from None
    except TimeoutError:
        raise _AnswerError(
            RevocationErrorKind.UNREACHABLE, f"{url}: timed out after {config.timeout:g} s"
        ) from None
    except (OSError, HTTPException) as exc:
        raise _AnswerError(
            RevocationErrorKind.UNREACHABLE, f"{url}: {exc or type(exc).__name__}"
        ) from None


# --- shared checks --------------------------------------------------------------------------


def _verify_signature(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> None:
    """Raises InvalidSignature (or TypeError for a key type that cannot sign)."""
    if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, data)
    elif isinstance(key, dsa.DSAPublicKey) and algorithm is not None:
        key.verify(signature, data, algorithm)
    else:
        raise TypeError("unsupported signature key or algorithm")


def _check_times(
    what: str,
    this_update: dt.datetime,
    next_update: dt.datetime | None,
    now: dt.datetime,
    config: RevocationConfig,
) -> None:
    if this_update > now + config.clock_skew:
        raise _AnswerError(
            RevocationErrorKind.NOT_YET_VALID,
            f"{what} thisUpdate {this_update:%Y-%m-%dT%H:%M:%SZ} is in the future",
        )
    if next_update is not None:
        if now - config.clock_skew > next_update:
            raise _AnswerError(
                RevocationErrorKind.STALE,
                f"{what} is stale: nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} has passed",
            )
    elif now - this_update > config.max_age + config.clock_skew:
        raise _AnswerError(
            RevocationErrorKind.STALE,
            f"{what} is stale: no nextUpdate and thisUpdate older than {config.max_age}",
        )


def _reason(flag: x509.ReasonFlags | None) -> str:
    return flag.value if flag is not None else ""


def _valid_at(cert: x509.Certificate, now: dt.datetime, skew: dt.timedelta) -> bool:
    return cert.not_valid_before_utc - skew <= now <= cert.not_valid_after_utc + skew


# --- OCSP -----------------------------------------------------------------------------------


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def _responder_matches(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    # byKey: SHA-1 of the subjectPublicKey BIT STRING, which is exactly the RFC 5280 key id.
    key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return hmac.compare_digest(response.responder_key_hash or b"", key_id)


def _responder(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime, skew: dt.timedelta
) -> x509.Certificate:
    if _responder_matches(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _responder_matches(response, candidate):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise _AnswerError(
                RevocationErrorKind.BAD_SIGNATURE,
                "the OCSP responder certificate was not issued by the certificate's issuer",
            ) from None
        try:
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise _AnswerError(
                RevocationErrorKind.BAD_SIGNATURE,
                "the OCSP responder certificate lacks the OCSP signing EKU",
            )
        if not _valid_at(candidate, now, skew):
            raise _AnswerError(
                RevocationErrorKind.BAD_SIGNATURE, "the OCSP responder certificate is not valid now"
            )
        return candidate
    raise _AnswerError(
        RevocationErrorKind.BAD_SIGNATURE,
        "the OCSP response is signed by neither the issuer nor a responder it authorized",
    )


def _single_for(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        # Recompute our CertID with the hash the responder chose.
        ours = (
            ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, single.hash_algorithm).build()
        )
        if (
            single.serial_number == ours.serial_number
            and single.issuer_name_hash == ours.issuer_name_hash
            and single.issuer_key_hash == ours.issuer_key_hash
        ):
            return single
    raise _AnswerError(
        RevocationErrorKind.CERT_ID_MISMATCH, "the OCSP response is about another certificate"
    )


def _nonce_of(response: ocsp.OCSPResponse) -> bytes | None:
    try:
        return response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _ocsp_answer(
    data: bytes,
    nonce: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: dt.datetime,
    config: RevocationConfig,
    url: str,
) -> RevocationResult:
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise _AnswerError(
            RevocationErrorKind.MALFORMED, "the OCSP answer does not parse"
        ) from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _AnswerError(
            RevocationErrorKind.RESPONDER_ERROR,
            f"the OCSP responder answered {response.response_status.name.lower()}",
        )
    try:
        signer = _responder(response, issuer, now, config.clock_skew)
        _verify_signature(
            signer.public_key(),
            response.signature,
            response.tbs_response_bytes,
            response.signature_hash_algorithm,
        )
    except (InvalidSignature, TypeError, UnsupportedAlgorithm):
        raise _AnswerError(
            RevocationErrorKind.BAD_SIGNATURE, "the OCSP response signature does not verify"
        ) from None
    got = _nonce_of(response)
    if got is None:
        if config.require_nonce:
            raise _AnswerError(RevocationErrorKind.NONCE_MISMATCH, "the OCSP response has no nonce")
    elif not hmac.compare_digest(got, nonce):
        raise _AnswerError(
            RevocationErrorKind.NONCE_MISMATCH,
            "the OCSP response nonce is not ours (replayed or cached answer)",
        )
    single = _single_for(response, cert, issuer)
    _check_times("the OCSP response", single.this_update_utc, single.next_update_utc, now, config)
    status = single.certificate_status
    base = RevocationResult(
        RevocationState.GOOD,
        RevocationMethod.OCSP,
        url,
        this_update=single.this_update_utc,
        next_update=single.next_update_utc,
    )
    if status is ocsp.OCSPCertStatus.REVOKED:
        return dataclasses.replace(
            base,
            state=RevocationState.REVOKED,
            revocation_time=single.revocation_time_utc,
            revocation_reason=_reason(single.revocation_reason),
        )
    if status is ocsp.OCSPCertStatus.UNKNOWN:
        return dataclasses.replace(base, state=RevocationState.UNKNOWN)
    return base


def check_ocsp(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    config: RevocationConfig = RevocationConfig(),
    *,
    now: dt.datetime | None = None,
) -> RevocationResult:
    """Ask the OCSP responder about `cert`; ERROR (with `error_kind`) when no trustworthy answer."""
    urls = [config.ocsp_url] if config.ocsp_url else ocsp_urls(cert)
    if not urls:
        return _error(RevocationMethod.OCSP, "", RevocationErrorKind.NO_SOURCE, "no OCSP URL")
    url = urls[0]
    nonce = secrets.token_bytes(NONCE_SIZE)
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - CertID, per RFC 5019
        .add_extension(x509.OCSPNonce(nonce), critical=False)
        .build()
    )
    try:
        data = _fetch(url, config, config.max_response_bytes, request.public_bytes(Encoding.DER))
        # Judged at arrival time: a slow responder must not make a stale answer look fresh.
        return _ocsp_answer(data, nonce, cert, issuer, now or _utcnow(), config, url)
    except _AnswerError as exc:
        return _error(RevocationMethod.OCSP, url, exc.kind, exc.message)


def _error(
    method: RevocationMethod | None, url: str, kind: RevocationErrorKind, message: str
) -> RevocationResult:
    prefix = f"{method.value.upper()}: " if method else ""
    return RevocationResult(
        RevocationState.ERROR, method, url, error=prefix + message, error_kind=kind
    )


# --- CRL ------------------------------------------------------------------------------------


def crl_urls(cert: x509.Certificate) -> list[str]:
    try:
        cdps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for dp in cdps
        for name in dp.full_name or ()
        if isinstance(name, x509.UniformResourceIdentifier)
        and name.value.lower().startswith(("http://", "https://"))
    ]


def _read_crl_file(path: Path, limit: int) -> bytes:
    try:
        return read_regular_capped(path, limit)
    except FileTooLargeError:
        raise _AnswerError(RevocationErrorKind.MALFORMED, f"{path}: over {limit} bytes") from None
    except OSError as exc:
        raise _AnswerError(
            RevocationErrorKind.UNREACHABLE, f"{path}: {exc.strerror or exc}"
        ) from None


def _crl_answer(
    data: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: dt.datetime,
    config: RevocationConfig,
    url: str,
) -> RevocationResult:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        extensions = crl.extensions
    except ValueError:
        raise _AnswerError(RevocationErrorKind.MALFORMED, "the CRL does not parse") from None
    if crl.issuer != issuer.subject:
        raise _AnswerError(
            RevocationErrorKind.BAD_SIGNATURE, "the CRL is issued by another CA (indirect CRL)"
        )
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            raise _AnswerError(RevocationErrorKind.BAD_SIGNATURE, "the issuer may not sign CRLs")
    except x509.ExtensionNotFound:
        pass
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise _AnswerError(RevocationErrorKind.BAD_SIGNATURE, "the CRL signature does not verify")
    try:
        extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        raise _AnswerError(RevocationErrorKind.MALFORMED, "a delta CRL, not a full one")
    except x509.ExtensionNotFound:
        pass
    _check_times("the CRL", crl.last_update_utc, crl.next_update_utc, now, config)
    base = RevocationResult(
        RevocationState.GOOD,
        RevocationMethod.CRL,
        url,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
    )
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return base
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = ""
    return dataclasses.replace(
        base,
        state=RevocationState.REVOKED,
        revocation_time=entry.revocation_date_utc,
        revocation_reason=reason,
    )


def _crl_sources(cert: x509.Certificate, config: RevocationConfig) -> list[str]:
    return [config.crl_url] if config.crl_url else crl_urls(cert)


def check_crl(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    config: RevocationConfig = RevocationConfig(),
    *,
    now: dt.datetime | None = None,
) -> RevocationResult:
    """Look `cert` up in its issuer's CRL; tries each distribution point until one answers."""
    sources = _crl_sources(cert, config)
    if not sources:
        return _error(
            RevocationMethod.CRL, "", RevocationErrorKind.NO_SOURCE, "no CRL distribution point"
        )
    failures: list[_AnswerError] = []
    for source in sources:
        try:
            if source.lower().startswith(("http://", "https://")):
                data = _fetch(source, config, config.max_crl_bytes)
            else:
                data = _read_crl_file(Path(source.removeprefix("file://")), config.max_crl_bytes)
            return _crl_answer(data, cert, issuer, now or _utcnow(), config, source)
        except _AnswerError as exc:
            failures.append(exc)
    last = failures[-1]
    message = "; ".join(f.message for f in failures)
    return _error(RevocationMethod.CRL, sources[-1], last.kind, message)


# --- both -----------------------------------------------------------------------------------


def check_revocation(
    cert: x509.Certificate,
    issuer: x509.Certificate | None,
    config: RevocationConfig = RevocationConfig(),
    *,
    clock: Callable[[], dt.datetime] | None = None,
) -> RevocationResult:
    """OCSP first; on an OCSP ERROR (not on UNKNOWN: that is the issuer's answer), the CRL.

    Answers are judged for freshness when they arrive (`clock`, default the system clock)."""
    if issuer is None:
        return _error(
            None,
            "",
            RevocationErrorKind.NO_ISSUER,
            "the issuer certificate is not available (put the chain in the file or the trust "
            "store)",
        )
    first = check_ocsp(cert, issuer, config, now=clock() if clock else None)
    if first.state is not RevocationState.ERROR or not config.crl_fallback:
        return first
    second = check_crl(cert, issuer, config, now=clock() if clock else None)
    if second.state is RevocationState.ERROR:
        return dataclasses.replace(
            first, error=f"{first.error}; {second.error}", ocsp_error=first.error
        )
    return dataclasses.replace(second, ocsp_error=first.error)
