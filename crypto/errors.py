"""The one error tree of the crypto package.

Verification failures are deliberately opaque: one type, one fixed message, no detail that could
act as an oracle (which check failed, at what offset, with which key).
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error the crypto package raises on purpose."""


class DecryptionError(CryptoError):
    """Opening a sealed message failed: tampered, truncated, wrong key or wrong associated data."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


class VerificationError(CryptoError):
    """A signature, MAC or authenticated file did not verify."""

    def __init__(self) -> None:
        super().__init__("verification failed")


class NonceExhaustedError(CryptoError):
    """A key has sealed as many messages as its nonce discipline allows: rotate the key."""


class NonceStateError(CryptoError):
    """The persisted nonce counter is missing, unreadable or corrupt: refuse rather than reuse."""


class NonceStateLostError(NonceStateError):
    """The counter file of a key that has sealed data is gone: starting again would reuse nonces."""


class StateFileError(CryptoError):
    """A checksummed state file (:mod:`crypto.statefile`) is missing, unreadable, corrupt or of
    an unsupported version; ``problem`` says which. Refuse, or act conservatively: never reset."""

    def __init__(self, path: object, problem: str, detail: str = "") -> None:
        what = {
            "missing": "does not exist",
            "unreadable": f"cannot be read: {detail}",
            "corrupt": "is corrupt",
            "version": "has an unsupported version",
        }.get(problem, problem)
        super().__init__(f"state file {path} {what}")
        self.path = path
        self.problem = problem


class KemError(CryptoError):
    """A KEM key or ciphertext has the wrong length or form."""


class KeyFileError(CryptoError):
    """A key file is missing, malformed, or has unsafe permissions."""


class KeyringError(CryptoError):
    """The keyring metadata is missing, malformed, or names a key that does not exist."""


class PkiError(CryptoError):
    """A certificate or key cannot be created, read or used as asked (unknown role, bad path...)."""
