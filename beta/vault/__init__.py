"""The vault of known-good copies of healable files (AES-256-GCM, verified on every read).

What the Beta runtime uses::

    vault = Vault(VaultConfig(directory, roots=(Path("/etc"),)), key_manager)
    vault.capture(path, baseline_entry.blake3, baseline_version=baseline.version)  # live file
    copy = vault.find(path, baseline_entry.blake3)   # VaultTamperedError / VaultNotFoundError
    vault.close()
"""

from beta.vault.safefs import UnsafePathError, check_path
from beta.vault.store import (
    BadCopy,
    Vault,
    VaultConfig,
    VaultCopy,
    VaultError,
    VaultNotFoundError,
    VaultRecord,
    VaultTamperedError,
    VaultVerification,
)

__all__ = [
    "BadCopy",
    "UnsafePathError",
    "Vault",
    "VaultConfig",
    "VaultCopy",
    "VaultError",
    "VaultNotFoundError",
    "VaultRecord",
    "VaultTamperedError",
    "VaultVerification",
    "check_path",
]
