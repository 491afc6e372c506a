"""Healing tampered files from the vault: validated, atomic, metadata-exact, loop-guarded.

What the Beta runtime uses::

    vault = Vault(VaultConfig(heal.vault_directory, roots=...), key_manager)
    healer = Healer(
        HealConfig(state_dir, validators=(ValidatorRule("/etc/ssh/sshd_config",
                                                        ("sshd", "-t", "-f", "{path}")),)),
        vault, lambda: monitor.baseline, key_manager,
        policy=fim_policy(config.fim), suppress=monitor.suppress, on_record=emit,
    )
    healer.sync_vault()                        # capture known-good copies of healable files
    healer.on_change(change, event_id)         # per FIM change: auto heals, approve proposes
    healer.list_proposals(states, page_size=..., page_token=...)   # BetaService
    healer.approve(id, spiffe_id, comment, expected_current_blake3)
    healer.reject(id, spiffe_id, comment)
    healer.expire()                            # periodically
    emit = lambda record: outbox.append(beta.heal.convert.record_to_event(record))

The FIM config must exclude `HEAL_TEMP_GLOB`, the heal's candidate file in the watched
directory: build the monitor from `with_heal_exclude(config.fim)`. `beta.heal.convert` is
imported on its own: it pulls in the generated protobuf code.
"""

from beta.heal.guard import BackoffConfig, LoopGuard
from beta.heal.healer import (
    HEAL_TEMP_GLOB,
    HEAL_TEMP_SUFFIX,
    HealConfig,
    Healer,
    VaultSync,
    fim_policy,
    with_heal_exclude,
)
from beta.heal.model import HealProposal, HealRecord, HealState, ValidatorResult
from beta.heal.queue import HealConflictError, HealExpiredError, HealQueue
from beta.heal.sealed_doc import HealStateError, HealStateTamperedError
from beta.heal.validate import ValidatorRule, run_validator

__all__ = [
    "HEAL_TEMP_GLOB",
    "HEAL_TEMP_SUFFIX",
    "BackoffConfig",
    "HealConfig",
    "HealConflictError",
    "HealExpiredError",
    "HealProposal",
    "HealQueue",
    "HealRecord",
    "HealState",
    "HealStateError",
    "HealStateTamperedError",
    "Healer",
    "LoopGuard",
    "ValidatorResult",
    "ValidatorRule",
    "VaultSync",
    "fim_policy",
    "run_validator",
    "with_heal_exclude",
]
