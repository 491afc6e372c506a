"""What the certificate tests (unit checks and the OCSP/CRL integration) build test CAs from."""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

# A test CA's key usage (critical): signs certificates and CRLs, and its own OCSP responses.
CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def name(cn: str) -> x509.Name:
    """A distinguished name of just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
