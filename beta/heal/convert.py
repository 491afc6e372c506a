"""Heal domain types -> protobuf (the only heal module that imports `qsc.*`).

`record_to_event` builds a `qsc.common.v1.Event` with detail `heal_action`, category HEALING;
`bad_copy_to_event` the `file_integrity` event of a vault copy that failed verification;
the runtime stamps id, guardian and sequence number. `proposal_to_proto` and
`states_from_proto` serve `BetaService.ListHealProposals`, `ApproveHeal` and `RejectHeal`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from beta.fim.config import HealPolicyName
from beta.fim.convert import rule_ref
from beta.heal.model import HealProposal, HealRecord, HealState, ValidatorResult
from qsc.beta.v1 import beta_service_pb2
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import event_pb2
from qsc.common.v1 import heal_details_pb2 as pb
from qsc.common.v1 import integrity_details_pb2 as ipb

__all__ = [
    "bad_copy_to_event",
    "policy_to_proto",
    "proposal_to_proto",
    "record_to_action",
    "record_to_event",
    "state_to_proto",
    "states_from_proto",
]

_STATE: Final[dict[HealState, pb.HealState.ValueType]] = {
    HealState.PROPOSED: pb.HEAL_STATE_PROPOSED,
    HealState.APPROVED: pb.HEAL_STATE_APPROVED,
    HealState.REJECTED: pb.HEAL_STATE_REJECTED,
    HealState.APPLIED: pb.HEAL_STATE_APPLIED,
    HealState.VERIFIED: pb.HEAL_STATE_VERIFIED,
    HealState.FAILED: pb.HEAL_STATE_FAILED,
}
_STATE_BY_PB: Final = {v: k for k, v in _STATE.items()}
_POLICY: Final[dict[str, pb.HealPolicy.ValueType]] = {
    "auto": pb.HEAL_POLICY_AUTO,
    "approve": pb.HEAL_POLICY_APPROVE,
    "never": pb.HEAL_POLICY_NEVER,
}
# A restored file is good news but still an intervention; a failed heal leaves a tampered file
# in place; a file the loop guard gave up on is being fought over by someone.
_SEVERITY: Final[dict[HealState, cls.Severity.ValueType]] = {
    HealState.PROPOSED: cls.SEVERITY_MEDIUM,
    HealState.APPROVED: cls.SEVERITY_LOW,
    HealState.REJECTED: cls.SEVERITY_MEDIUM,
    HealState.APPLIED: cls.SEVERITY_LOW,
    HealState.VERIFIED: cls.SEVERITY_LOW,
    HealState.FAILED: cls.SEVERITY_HIGH,
}
_RULES: Final[dict[HealState, tuple[str, str]]] = {
    HealState.PROPOSED: ("beta.heal.proposed", "Heal proposed, awaiting approval"),
    HealState.APPROVED: ("beta.heal.approved", "Heal approved"),
    HealState.REJECTED: ("beta.heal.rejected", "Heal rejected"),
    HealState.APPLIED: ("beta.heal.applied", "Heal applied"),
    HealState.VERIFIED: ("beta.heal.verified", "File healed from the vault"),
    HealState.FAILED: ("beta.heal.failed", "Heal failed"),
}
_LOOP_RULE: Final = ("beta.heal.loop_guard", "File tampered with again after healing")
_MAX_TEXT: Final = 4096


def _text(value: str, limit: int = _MAX_TEXT) -> str:
    # Protobuf strings must be UTF-8; paths need not be (surrogate-escaped bytes).
    return value.encode("utf-8", "replace").decode("utf-8")[:limit]


def state_to_proto(state: HealState) -> pb.HealState.ValueType:
    return _STATE[state]


def states_from_proto(values: Iterable[pb.HealState.ValueType]) -> tuple[HealState, ...]:
    """The filter of ListHealProposals (UNSPECIFIED and unknown numbers are ignored)."""
    return tuple(_STATE_BY_PB[v] for v in values if v in _STATE_BY_PB)


def policy_to_proto(policy: HealPolicyName) -> pb.HealPolicy.ValueType:
    return _POLICY.get(policy, pb.HEAL_POLICY_UNSPECIFIED)


def _validator(v: ValidatorResult) -> pb.ValidatorResult:
    message = v.message if len(v.message) <= _MAX_TEXT else v.message[:_MAX_TEXT]
    return pb.ValidatorResult(
        command=_text(v.command), exit_code=v.exit_code, passed=v.passed, message=_text(message)
    )


def record_to_action(r: HealRecord) -> pb.HealAction:
    action = pb.HealAction(
        proposal_id=r.proposal_id,
        path=_text(r.path),
        state=_STATE[r.state],
        policy=policy_to_proto(r.policy),
        baseline_version=r.baseline_version,
        baseline_blake3=r.baseline_blake3,
        vault_blake3=r.vault_blake3,
        vault_version=r.vault_version,
        before_blake3=r.before_blake3,
        after_blake3=r.after_blake3,
        failure_reason=_text(r.failure_reason),
        actor=_text(r.actor),
        comment=_text(r.comment),
        trigger_event_id=r.trigger_event_id,
    )
    if r.validator is not None:
        action.validator.CopyFrom(_validator(r.validator))
    return action


def _summary(r: HealRecord) -> str:
    what = {
        HealState.PROPOSED: "heal proposed, awaiting approval",
        HealState.APPROVED: f"heal approved by {r.actor or 'policy'}",
        HealState.REJECTED: f"heal rejected by {r.actor or 'expiry'}",
        HealState.APPLIED: "healed, verification pending",
        HealState.VERIFIED: "healed from the vault and verified",
        HealState.FAILED: "heal failed",
    }[r.state]
    if r.loop_guard:
        what = "tampered with again after healing; not healed"
    text = f"{r.path}: {what}"
    if r.failure_reason:
        text += f": {r.failure_reason}"
    return _text(text, 512)


def record_to_event(r: HealRecord) -> event_pb2.Event:
    rule_id, name = _LOOP_RULE if r.loop_guard else _RULES[r.state]
    event = event_pb2.Event(
        severity=cls.SEVERITY_HIGH if r.loop_guard else _SEVERITY[r.state],
        category=cls.CATEGORY_HEALING,
        rule=cls.RuleRef(id=rule_id, name=name),
        summary=_summary(r),
        heal_action=record_to_action(r),
    )
    ns = int(r.time * 1e9)
    event.time.FromNanoseconds(ns)
    event.observed_time.FromNanoseconds(ns)
    return event


def proposal_to_proto(p: HealProposal) -> beta_service_pb2.HealProposal:
    msg = beta_service_pb2.HealProposal(
        id=p.id,
        path=_text(p.path),
        state=_STATE[p.state],
        policy=policy_to_proto(p.policy),
        baseline_version=p.baseline_version,
        baseline_blake3=p.baseline_blake3,
        current_blake3=p.current_blake3,
        trigger_event_id=p.trigger_event_id,
        actor=_text(p.actor),
        comment=_text(p.comment),
    )
    msg.create_time.FromNanoseconds(int(p.create_time * 1e9))
    msg.update_time.FromNanoseconds(int(p.update_time * 1e9))
    if p.last_action is not None:
        msg.last_action.CopyFrom(record_to_action(p.last_action))
    return msg


_VAULT_RULE: Final = ("beta.vault.copy_tampered", "Vault copy failed verification")


def bad_copy_to_event(
    path: str, version: int, indexed_blake3: bytes, reason: str, now: float
) -> event_pb2.Event:
    """A `file_integrity` event (change VAULT_COPY_TAMPERED, detection VAULT_VERIFY) for one
    vault copy that failed verification, or for the index itself (`version` 0, `path` the index
    file). HIGH: the file can no longer be healed from that copy, and someone wrote to the vault."""
    what = f"vault copy v{version} of {path}" if version else f"vault index {path}"
    event = event_pb2.Event(
        severity=cls.SEVERITY_HIGH,
        category=cls.CATEGORY_INTEGRITY,
        rule=rule_ref(*_VAULT_RULE, ("T1565.001",)),
        summary=_text(f"{what} failed verification ({reason}); nothing is healed from it", 512),
        file_integrity=ipb.FileIntegrity(
            path=_text(path),
            change=ipb.FILE_CHANGE_VAULT_COPY_TAMPERED,
            old_blake3=indexed_blake3,
            detection=ipb.INTEGRITY_DETECTION_VAULT_VERIFY,
        ),
    )
    ns = int(now * 1e9)
    event.time.FromNanoseconds(ns)
    event.observed_time.FromNanoseconds(ns)
    return event
