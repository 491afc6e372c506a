"""Alpha's rules for AlphaService: `Rule` and rule-file validations -> protobuf.

Sensor observations become events in `alpha.sensors.convert`.
"""

from __future__ import annotations

from typing import Final

from alpha.rulecheck import Validation
from alpha.rules import Rule
from qsc.alpha.v1 import alpha_service_pb2
from qsc.common.v1 import classification_pb2


def rule_to_proto(rule: Rule) -> alpha_service_pb2.Rule:
    msg = alpha_service_pb2.Rule(
        id=rule.id,
        name=rule.name,
        description=rule.desc,
        priority=classification_pb2.Severity.ValueType(rule.severity),
        tags=rule.tags,
        enabled=rule.enabled,
        source_file=rule.location.file,
        source_line=rule.location.line,
        condition=rule.condition,
        exception_count=rule.exception_count,
    )
    for t in rule.techniques:
        msg.techniques.add(
            id=t.id,
            name=t.name,
            tactics=[classification_pb2.MitreTactic.ValueType(n) for n in t.tactics],
        )
    return msg


_PROBLEM_SEVERITY: Final = {
    "error": alpha_service_pb2.PROBLEM_SEVERITY_ERROR,
    "warning": alpha_service_pb2.PROBLEM_SEVERITY_WARNING,
}


def validation_to_proto(result: Validation) -> alpha_service_pb2.ValidateRulesResponse:
    response = alpha_service_pb2.ValidateRulesResponse(
        valid=result.valid, rule_count=result.rule_count
    )
    for p in result.problems:
        response.problems.add(
            file=p.file, line=p.line, severity=_PROBLEM_SEVERITY[p.severity], reason=p.reason
        )
    return response
