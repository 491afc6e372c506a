"""Certificate monitoring: expiry, validity, chain, key match, strength, names, revocation.

What the Beta runtime calls::

    checker = CertificateChecker(CertPolicy())            # once; caches trust stores
    reports = checker.check(WatchedCertificate(path, key_path=..., hostnames=(...),
                                               trust_store=..., revocation=RevocationConfig()))
    events = [beta.certs.convert.report_to_event(r) for r in reports]
"""

from __future__ import annotations

from beta.certs.check import (
    DEFAULT_THRESHOLDS,
    CertificateChecker,
    CertificateReport,
    CertPolicy,
    ExpiryThreshold,
    Problem,
    Severity,
    TrustStore,
    WatchedCertificate,
    check_certificate_file,
    load_trust_store,
)
from beta.certs.ocsp import (
    RevocationConfig,
    RevocationErrorKind,
    RevocationMethod,
    RevocationResult,
    RevocationState,
    check_crl,
    check_ocsp,
    check_revocation,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "CertPolicy",
    "CertificateChecker",
    "CertificateReport",
    "ExpiryThreshold",
    "Problem",
    "RevocationConfig",
    "RevocationErrorKind",
    "RevocationMethod",
    "RevocationResult",
    "RevocationState",
    "Severity",
    "TrustStore",
    "WatchedCertificate",
    "check_certificate_file",
    "check_crl",
    "check_ocsp",
    "check_revocation",
    "load_trust_store",
]
