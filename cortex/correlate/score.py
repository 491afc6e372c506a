"""Confidence of a hit: naive-Bayes log-odds with every factor shown, learned from verdicts.

    posterior log-odds = logit(prior) + sum over the steps seen of  weight * ln(LR)

* **prior**: the rule's P(malicious) before evidence.
* **LR** of a step: P(its evidence | malicious) / P(it | benign). Seeded by the rule file and
  moved by verdicts (`VerdictModel`): each is the ratio of two Beta-distributed rates, the step's
  true-positive rate (present in assessments judged malicious) and false-positive rate (present
  in assessments judged benign or false positive), with the seed as 20 pseudo-verdicts; bounded
  to [0.01, 1000]. So a step that keeps showing up in false positives loses weight, and one
  that keeps showing up in true positives gains it.
* **weight** damps repeated and correlated evidence: a step's LR is for the events it needs
  (`count`, 1 by default); n times that many weigh 1 + 0.5 * log2(n), at most 3 (a storm of one
  alert is not a hundred proofs); steps of one
  family (the same thing seen by two sensors) count the strongest fully, a weaker one not at all
  when it saw only executions the stronger one saw ("the same exec counts once"), else half.

The posterior is in (0, 1); `confidence_id` is OCSF's band (1 low < 0.5 <= 2 medium < 0.8 <= 3
high). `Score.factors` lists each step's count, LR, weight and log-odds contribution, strongest
first: the answer to "why 0.87?".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from cortex.correlate.engine import Evidence, Hit
from cortex.correlate.rules import CorrelationRule, Step

LR_MIN: Final = 0.01
LR_MAX: Final = 1000.0
SEED_VERDICTS: Final = 20.0  # how many verdicts the seed LR is worth
REPEAT_DAMPING: Final = 0.5
MAX_REPEAT_WEIGHT: Final = 3.0
OCSF_LOW, OCSF_MEDIUM, OCSF_HIGH = 1, 2, 3

Verdict = Literal["true_positive", "false_positive", "benign"]


@dataclass(frozen=True)
class Factor:
    step: str
    source: str
    count: int
    lr: float
    weight: float
    contribution: float  # natural-log odds this factor adds (weight * ln(lr))
    seed_lr: float


@dataclass(frozen=True)
class Score:
    prior: float
    posterior: float
    log_odds: float
    confidence_id: int
    threshold: float
    factors: tuple[Factor, ...]

    @property
    def raised(self) -> bool:
        return self.posterior >= self.threshold


@dataclass
class _Counts:
    malicious: int = 0  # verdicts: true positive
    benign: int = 0  # verdicts: false positive or benign
    present_malicious: dict[str, int] = field(default_factory=dict)  # step -> count
    present_benign: dict[str, int] = field(default_factory=dict)


class VerdictModel:
    """Per-rule verdict counts and the likelihood ratios they give (see the module docstring)."""

    def __init__(self) -> None:
        self._counts: dict[str, _Counts] = {}

    def record(self, rule_id: str, steps_present: frozenset[str], verdict: Verdict) -> None:
        counts = self._counts.setdefault(rule_id, _Counts())
        malicious = verdict == "true_positive"
        if malicious:
            counts.malicious += 1
        else:
            counts.benign += 1
        present = counts.present_malicious if malicious else counts.present_benign
        for step in steps_present:
            present[step] = present.get(step, 0) + 1

    def lr(self, rule_id: str, step: Step) -> float:
        counts = self._counts.get(rule_id)
        if counts is None:
            return step.lr
        tpr0, fpr0 = _seed_rates(step.lr)
        tpr = (SEED_VERDICTS * tpr0 + counts.present_malicious.get(step.name, 0)) / (
            SEED_VERDICTS + counts.malicious
        )
        fpr = (SEED_VERDICTS * fpr0 + counts.present_benign.get(step.name, 0)) / (
            SEED_VERDICTS + counts.benign
        )
        return min(LR_MAX, max(LR_MIN, tpr / fpr))

    def reset(self) -> None:
        self._counts.clear()

    def snapshot(self) -> dict[str, dict[str, object]]:
        """The counts, as plain data (to persist, or for `qsc-cortex model show`)."""
        return {
            rule: {
                "malicious": c.malicious,
                "benign": c.benign,
                "present_malicious": dict(c.present_malicious),
                "present_benign": dict(c.present_benign),
            }
            for rule, c in self._counts.items()
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Mapping[str, object]]) -> VerdictModel:
        model = cls()
        for rule, c in data.items():
            pm, pb = c.get("present_malicious", {}), c.get("present_benign", {})
            model._counts[rule] = _Counts(
                malicious=_count(c.get("malicious")),
                benign=_count(c.get("benign")),
                present_malicious={str(k): _count(v) for k, v in _items(pm)},
                present_benign={str(k): _count(v) for k, v in _items(pb)},
            )
        return model


def _items(value: object) -> list[tuple[object, object]]:
    return list(value.items()) if isinstance(value, Mapping) else []


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("verdict counts are non-negative integers")
    return value


def _seed_rates(lr: float) -> tuple[float, float]:
    """(TPR, FPR) whose ratio is `lr`, the larger of the two 0.5."""
    return (0.5, 0.5 / lr) if lr >= 1 else (0.5 * lr, 0.5)


def _repeat_weight(count: int, needed: int) -> float:
    # The LR is the step's, as it needs `needed` events; more than that weighs sub-linearly.
    return min(MAX_REPEAT_WEIGHT, 1.0 + REPEAT_DAMPING * math.log2(max(1.0, count / needed)))


def score(hit: Hit, model: VerdictModel | None = None) -> Score:
    """The confidence of `hit` under `model` (the seed LRs when None)."""
    rule = hit.rule
    steps = {s.name: s for s in rule.steps}
    raw: list[tuple[Step, Evidence, float, float]] = []  # step, evidence, lr, repeat weight
    for ev in hit.evidence:
        step = steps[ev.step]
        lr = model.lr(rule.id, step) if model is not None else step.lr
        raw.append((step, ev, lr, _repeat_weight(ev.count, max(step.count, step.distinct, 1))))
    factors = _damp_families(raw)
    log_odds = math.log(rule.prior / (1 - rule.prior)) + sum(f.contribution for f in factors)
    posterior = 1 / (1 + math.exp(-log_odds)) if log_odds > -700 else 0.0
    return Score(
        prior=rule.prior,
        posterior=posterior,
        log_odds=log_odds,
        confidence_id=confidence_band(posterior),
        threshold=rule.threshold,
        factors=tuple(sorted(factors, key=lambda f: -abs(f.contribution))),
    )


def _damp_families(raw: list[tuple[Step, Evidence, float, float]]) -> list[Factor]:
    out: list[Factor] = []
    families: dict[str, list[tuple[Step, Evidence, float, float]]] = {}
    for item in raw:
        families.setdefault(item[0].family or f"\0{item[0].name}", []).append(item)
    for members in families.values():
        members.sort(key=lambda m: -abs(math.log(m[2]) * m[3]))
        seen_execs: set[str] = set()
        for rank, (step, ev, lr, repeat) in enumerate(members):
            weight = repeat
            if rank > 0:
                execs = set(ev.exec_ids)
                weight *= 0.0 if execs and execs <= seen_execs else 0.5
            seen_execs |= set(ev.exec_ids)
            out.append(
                Factor(
                    step=step.name,
                    source=step.source,
                    count=ev.count,
                    lr=lr,
                    weight=weight,
                    contribution=weight * math.log(lr),
                    seed_lr=step.lr,
                )
            )
    return out


def confidence_band(posterior: float) -> int:
    if posterior >= 0.8:
        return OCSF_HIGH
    if posterior >= 0.5:
        return OCSF_MEDIUM
    return OCSF_LOW


def explain(rule: CorrelationRule, s: Score) -> str:
    """One line per factor, strongest first, for logs and `qsc-cortex` output."""
    lines = [
        f"{rule.id}: confidence {s.posterior:.2f} (prior {s.prior:g}, threshold {s.threshold:g})"
    ]
    for f in s.factors:
        lines.append(
            f"  {f.step:24s} {f.source:18s} x{f.count:<4d} LR {f.lr:8.3g}  weight {f.weight:4.2f}"
            f"  {f.contribution:+6.2f} log-odds"
        )
    return "\n".join(lines)
