"""Beta's event sources as guardian workers, one module each.

Each registers a sensor in the guardian's registry, keeps its state current and emits its events.

- `fim.FimSource`: the baseline scans and the realtime monitor, their changes as events.
- `heal.HealSource`: vault sync, then FIM changes on healable paths healed or proposed.
- `scheduled.CertWatcher`, `scheduled.BackupVerifier`: certificate checks and backup
  verifications on their schedules, each remembered across restarts.
"""
