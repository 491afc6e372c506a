"""OCSF Detection Findings checked against the OCSF schema itself, offline.

The schema is the official one as schema.ocsf.io exports it (Apache-2.0), version
`cortex.ocsf.OCSF_VERSION`, shipped in the `ocsf-json-schema` package (a test dependency,
pinned in pyproject.toml), which also turns it into a JSON Schema (draft 2020-12) of the class
with every object it uses embedded: required attributes, enum values, types, no attribute the
class or object does not define (`additionalProperties: false`), and OCSF's "at least one of"
constraints. On top of that, what JSON Schema does not say: each `*_id` enum's sibling caption
(`activity_name`, `severity`, `status`, `confidence`, `type_name`, `analytic.type`) is the
schema's caption of that id, `type_uid` is class_uid * 100 + activity_id, and
`confidence_score` is within 0-100.
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from cortex.ocsf import CLASS_UID, OCSF_VERSION

CLASS_NAME = "detection_finding"
# Sibling pairs: (id attribute, caption attribute) whose captions the schema's enum defines.
_SIBLINGS = (
    ("activity_id", "activity_name"),
    ("severity_id", "severity"),
    ("status_id", "status"),
    ("confidence_id", "confidence"),
    ("type_uid", "type_name"),
)
OTHER = 99  # an enum's "Other": the caption is then the source's own


@functools.cache
def _raw() -> dict[str, Any]:
    schema: dict[str, Any] = get_ocsf_schema(version=OCSF_VERSION)
    return schema


@functools.cache
def class_schema() -> dict[str, Any]:
    """The JSON Schema of Detection Finding in OCSF_VERSION, objects embedded, no profile."""
    embedded = OcsfJsonSchemaEmbedded(_raw())
    schema: dict[str, Any] = embedded.get_class_schema(class_name=CLASS_NAME, profiles=[])
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    schema = class_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def caption(attribute: str, value: int, obj: str | None = None) -> str | None:
    """The schema's caption of enum `value` of `attribute` (of the class, or of object `obj`)."""
    owner = _raw()["objects"][obj] if obj else _raw()["classes"][CLASS_NAME]
    enum = owner["attributes"][attribute].get("enum", {})
    entry = enum.get(str(value))
    return None if entry is None else str(entry["caption"])


def ocsf_errors(finding: dict[str, Any]) -> list[str]:
    """Everything in `finding` the OCSF schema refuses (empty when it conforms)."""
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in _validator().iter_errors(finding)
    ]
    for id_attr, name_attr in _SIBLINGS:
        if id_attr in finding and name_attr in finding and finding[id_attr] != OTHER:
            want = caption(id_attr, finding[id_attr])
            if finding[name_attr] != want:
                errors.append(f"{name_attr}: {finding[name_attr]!r}, the schema says {want!r}")
    analytic = finding.get("finding_info", {}).get("analytic", {})
    if "type" in analytic and analytic.get("type_id", OTHER) != OTHER:
        want = caption("type_id", analytic["type_id"], "analytic")
        if analytic["type"] != want:
            errors.append(f"finding_info/analytic/type: {analytic['type']!r}, not {want!r}")
    if finding.get("type_uid") != CLASS_UID * 100 + finding.get("activity_id", -1):
        errors.append("type_uid is not class_uid * 100 + activity_id")
    score = finding.get("confidence_score")
    if score is not None and not 0 <= score <= 100:
        errors.append(f"confidence_score {score} is outside 0-100")
    return errors
