"""Configuration integrity (FIM): an authenticated baseline of watched paths, full scans and
realtime inotify watching, with log-aware comparison.

What the Beta runtime uses::

    store = BaselineStore(config.baseline, key_manager)       # sealed with the "baseline" key
    baseline = store.load()                                   # BaselineTamperedError if edited
    monitor = FimMonitor(config, store, on_changes=..., on_health=...)
    monitor.start(); monitor.suppress(path, expected_blake3); monitor.stop()
    events = beta.fim.convert.changes_to_events(changes)      # qsc.common.v1.Event

`beta.fim.convert` is imported on its own: it pulls in the generated protobuf code.
"""

from beta.fim.baseline import (
    Baseline,
    BaselineMissingError,
    BaselineStore,
    BaselineStoreError,
    BaselineTamperedError,
    Change,
    ChangeKind,
    Detection,
    Entry,
    config_digest,
    tampered_change,
)
from beta.fim.config import FimConfig, FimConfigError, WatchPath
from beta.fim.metadata import FileMeta, FileType, MetaField, Observation, observe
from beta.fim.realtime import FimMonitor, HealthObservation, SensorStatus
from beta.fim.scanner import (
    IoBudget,
    ScanCancelledError,
    ScanIssue,
    Scanner,
    ScanProgress,
    ScanReport,
)

__all__ = [
    "Baseline",
    "BaselineMissingError",
    "BaselineStore",
    "BaselineStoreError",
    "BaselineTamperedError",
    "Change",
    "ChangeKind",
    "Detection",
    "Entry",
    "FileMeta",
    "FileType",
    "FimConfig",
    "FimConfigError",
    "FimMonitor",
    "HealthObservation",
    "IoBudget",
    "MetaField",
    "Observation",
    "ScanCancelledError",
    "ScanIssue",
    "ScanProgress",
    "ScanReport",
    "Scanner",
    "SensorStatus",
    "WatchPath",
    "config_digest",
    "observe",
    "tampered_change",
]
