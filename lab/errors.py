"""Errors halab shows to users: one line each, turned into an exit code by the CLI."""
from __future__ import annotations

from dataclasses import dataclass


class HalabError(Exception):
    """An error the user can act on; `hint` is the fix, `code` the exit status."""

    def __init__(self, message, code=1, hint=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint

    def __str__(self):
        return self.message


@dataclass(frozen=True)
class Problem:
    """One finding about a scenario file: where, which field, what value, how to fix."""

    file: str
    field: str
    value: object
    message: str
    fix: str
    severity: str = "error"  # "error" or "warning"

    def line(self) -> str:
        value = "" if self.value is _MISSING else f" = {self.value!r}"
        return f"{self.file}: {self.field}{value}: {self.message}; fix: {self.fix}"


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()
MISSING = _MISSING


class ScenarioError(HalabError):
    """A scenario failed validation; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem], code=2):
        self.problems = [p for p in problems if p.severity == "error"]
        self.warnings = [p for p in problems if p.severity != "error"]
        lines = [p.line() for p in self.problems]
        super().__init__("\n".join(lines), code=code)
