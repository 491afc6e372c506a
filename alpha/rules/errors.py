"""The one error tree of the rules engine.

Every problem in a rule file is a `RuleError` that names the file, the line and the reason, so an
operator can fix a refused file without reading the engine's code. It is an `InvalidArgumentError`
of the mesh tree: a rule file pushed through an API maps to INVALID_ARGUMENT without a new entry in
the status table.
"""

from __future__ import annotations

from mesh.errors import InvalidArgumentError


class RuleError(InvalidArgumentError):
    """A rule file, or one condition in it, cannot be loaded.

    `file` and `line` (1-based) are None when not known, for example for a condition compiled
    outside any file.
    """

    def __init__(self, reason: str, file: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        if self.file is None:
            return self.reason if self.line is None else f"line {self.line}: {self.reason}"
        if self.line is None:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"

    def at(self, file: str | None, line: int | None) -> RuleError:
        """The same error placed in a file and line, keeping the most precise location known."""
        return type(self)(
            self.reason,
            self.file if self.file is not None else file,
            self.line if self.line is not None else line,
        )


class ConditionError(RuleError):
    """A condition does not parse, or names a field, macro or list that does not exist, or
    compares a field with a value of the wrong type."""

    def __init__(
        self,
        reason: str,
        file: str | None = None,
        line: int | None = None,
        offset: int | None = None,
    ) -> None:
        # Offset of the offending token in the condition text; the loader turns it into a line.
        self.offset = offset
        super().__init__(reason, file, line)

    def at(self, file: str | None, line: int | None) -> ConditionError:
        return ConditionError(
            self.reason,
            self.file if self.file is not None else file,
            self.line if self.line is not None else line,
            self.offset,
        )
