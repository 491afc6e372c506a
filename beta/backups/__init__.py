"""Backup validation: authenticated manifests per backup set, structural and full verification.

What the Beta runtime calls::

    create_manifest(root, manifest_path, key_manager, backup_set="db")
    result = verify_backup_set(root, manifest_path, key_manager, depth=VerifyDepth.FULL,
                               subset_fraction=0.25, cursor_path=state_dir / "db.cursor")
    event = beta.backups.convert.result_to_event(result)
"""

from __future__ import annotations

from beta.backups.manifest import (
    BackupSetChangedError,
    KeySource,
    Manifest,
    ManifestEntry,
    ManifestError,
    ManifestMissingError,
    ManifestTamperedError,
    ManifestUnreadableError,
    create_manifest,
    load_manifest,
)
from beta.backups.scan import Progress, ProgressCallback
from beta.backups.verify import (
    BackupFailure,
    FailureKind,
    VerifyDepth,
    VerifyResult,
    verify_backup_set,
)

__all__ = [
    "BackupFailure",
    "BackupSetChangedError",
    "FailureKind",
    "KeySource",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "ManifestMissingError",
    "ManifestTamperedError",
    "ManifestUnreadableError",
    "Progress",
    "ProgressCallback",
    "VerifyDepth",
    "VerifyResult",
    "create_manifest",
    "load_manifest",
    "verify_backup_set",
]
