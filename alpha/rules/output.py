"""Rule output templates: text with `%field` substitutions, as in Falco.

`%proc.name`, `%proc.aname[2]`, `%fd.name`; `%%` is a literal percent sign. Unknown fields are
refused when the rule loads. A value that is missing renders as `<NA>`. Values are event data, often
attacker-chosen (a user name tried over SSH, a command line): control characters are escaped and
long values cut, so an output stays one readable line and cannot forge log lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alpha.rules import fields as fieldtab
from alpha.rules.compiler import suggest
from alpha.rules.errors import RuleError
from alpha.rules.fields import Event, Field, Value

MAX_VALUE_CHARS = 512
_PLACEHOLDER = re.compile(r"%%|%([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*(?:\[\d+\])?)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Placeholder:
    field: Field
    index: int | None


@dataclass(frozen=True)
class OutputTemplate:
    text: str
    parts: tuple[str | Placeholder, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field.name for p in self.parts if isinstance(p, Placeholder))

    def render(self, event: Event) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = part.field.extract(event, part.index)
                if part.field.octal and isinstance(value, int) and not isinstance(value, bool):
                    out.append(f"0o{value:o}")
                else:
                    out.append(render_value(value))
        return "".join(out)


def render_value(value: Value) -> str:
    if value is None:
        return "<NA>"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."


def parse_output(text: str) -> OutputTemplate:
    """Compile a template; raises RuleError (without location) naming an unknown field."""
    parts: list[str | Placeholder] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(text[last : m.start()])
        last = m.end()
        if m.group() == "%%":
            parts.append("%")
            continue
        written = m.group(1)
        name, _, rest = written.partition("[")
        index = int(rest[:-1]) if rest else None
        fld = fieldtab.lookup(name)
        if fld is None:
            raise RuleError(f"output: unknown field %{name}{suggest(name, fieldtab.all_names())}")
        if index is not None and fld.indexed is None:
            raise RuleError(f"output: field %{name} takes no [index]")
        parts.append(Placeholder(fld, index))
    parts.append(text[last:])
    merged: list[str | Placeholder] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return OutputTemplate(text, tuple(merged))
