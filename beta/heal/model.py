"""Heal domain types: states, validator results, heal records and proposals (plain Python).

`HealRecord` is one step of a heal (what `qsc.common.v1.HealAction` carries); `HealProposal` is
a heal waiting for, or past, an operator's decision (`qsc.beta.v1.HealProposal`). Both convert
to and from JSON-able dicts for the persisted queue.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Final

from beta.fim.config import HealPolicyName

__all__ = ["POLICIES", "HealProposal", "HealRecord", "HealState", "ValidatorResult"]

POLICIES: Final[tuple[HealPolicyName, ...]] = ("auto", "approve", "never")


class HealState(enum.Enum):
    """Names of `qsc.common.v1.HealState`: PROPOSED -> APPROVED -> APPLIED -> VERIFIED, or
    REJECTED / FAILED."""

    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    APPLIED = "applied"
    VERIFIED = "verified"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (HealState.REJECTED, HealState.VERIFIED, HealState.FAILED)


def _policy(value: object) -> HealPolicyName:
    for policy in POLICIES:
        if value == policy:
            return policy
    raise ValueError(f"unknown heal policy {value!r}")


@dataclass(frozen=True)
class ValidatorResult:
    """What the validator said about a candidate."""

    command: str  # as run, `{path}` substituted
    exit_code: int  # -1 when it could not run or timed out
    passed: bool
    message: str = ""  # the start of its output, bounded
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "passed": self.passed,
            "message": self.message,
            "timed_out": self.timed_out,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ValidatorResult:
        return cls(
            str(d["command"]),
            int(d["exit_code"]),
            bool(d["passed"]),
            str(d["message"]),
            bool(d["timed_out"]),
        )


_BYTES_FIELDS: Final = ("baseline_blake3", "vault_blake3", "before_blake3", "after_blake3")


@dataclass(frozen=True)
class HealRecord:
    """One step of healing `path`; the final one says VERIFIED or FAILED (and why)."""

    path: str
    state: HealState
    policy: HealPolicyName = "auto"
    baseline_version: int = 0
    baseline_blake3: bytes = b""
    vault_blake3: bytes = b""
    vault_version: int = 0
    before_blake3: bytes = b""  # the tampered content replaced; empty if the file was missing
    after_blake3: bytes = b""  # the file after the swap
    validator: ValidatorResult | None = None
    failure_reason: str = ""
    actor: str = ""  # who approved or rejected; empty for AUTO
    comment: str = ""
    proposal_id: str = ""
    trigger_event_id: str = ""
    time: float = 0.0  # Unix seconds
    loop_guard: bool = False  # refused by the loop guard: a report instead of another heal

    def evolve(self, **changes: Any) -> HealRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "state": self.state.value,
            "policy": self.policy,
            "baseline_version": self.baseline_version,
            "vault_version": self.vault_version,
            "failure_reason": self.failure_reason,
            "actor": self.actor,
            "comment": self.comment,
            "proposal_id": self.proposal_id,
            "trigger_event_id": self.trigger_event_id,
            "time": self.time,
            "loop_guard": self.loop_guard,
            "validator": self.validator.to_json() if self.validator else None,
        }
        for name in _BYTES_FIELDS:
            d[name] = getattr(self, name).hex()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HealRecord:
        v = d.get("validator")
        return cls(
            path=str(d["path"]),
            state=HealState(d["state"]),
            policy=_policy(d["policy"]),
            baseline_version=int(d["baseline_version"]),
            vault_version=int(d["vault_version"]),
            failure_reason=str(d["failure_reason"]),
            actor=str(d["actor"]),
            comment=str(d["comment"]),
            proposal_id=str(d["proposal_id"]),
            trigger_event_id=str(d["trigger_event_id"]),
            time=float(d["time"]),
            loop_guard=bool(d["loop_guard"]),
            validator=ValidatorResult.from_json(v) if isinstance(v, dict) else None,
            **{name: bytes.fromhex(str(d[name])) for name in _BYTES_FIELDS},
        )


@dataclass(frozen=True)
class HealProposal:
    """A heal waiting for (PROPOSED), or past (APPROVED, REJECTED, VERIFIED, FAILED), a decision."""

    id: str
    path: str
    state: HealState
    policy: HealPolicyName
    baseline_version: int
    baseline_blake3: bytes
    current_blake3: bytes  # when proposed; empty if the file was missing
    create_time: float
    update_time: float
    expire_time: float  # after this, approving fails and the proposal is rejected as expired
    trigger_event_id: str = ""
    actor: str = ""
    comment: str = ""
    last_action: HealRecord | None = None

    def evolve(self, **changes: Any) -> HealProposal:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "state": self.state.value,
            "policy": self.policy,
            "baseline_version": self.baseline_version,
            "baseline_blake3": self.baseline_blake3.hex(),
            "current_blake3": self.current_blake3.hex(),
            "create_time": self.create_time,
            "update_time": self.update_time,
            "expire_time": self.expire_time,
            "trigger_event_id": self.trigger_event_id,
            "actor": self.actor,
            "comment": self.comment,
            "last_action": self.last_action.to_json() if self.last_action else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HealProposal:
        last = d.get("last_action")
        return cls(
            id=str(d["id"]),
            path=str(d["path"]),
            state=HealState(d["state"]),
            policy=_policy(d["policy"]),
            baseline_version=int(d["baseline_version"]),
            baseline_blake3=bytes.fromhex(str(d["baseline_blake3"])),
            current_blake3=bytes.fromhex(str(d["current_blake3"])),
            create_time=float(d["create_time"]),
            update_time=float(d["update_time"]),
            expire_time=float(d["expire_time"]),
            trigger_event_id=str(d["trigger_event_id"]),
            actor=str(d["actor"]),
            comment=str(d["comment"]),
            last_action=HealRecord.from_json(last) if isinstance(last, dict) else None,
        )
