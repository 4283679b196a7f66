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
        value = "" if self.value is _MISSING else f" = {shown(self.value)}"
        return f"{self.file}: {shown_text(self.field)}{value}: {self.message}; fix: {self.fix}"


MAX_SHOWN = 60   # characters of a bad value an error message repeats


def shown(value) -> str:
    """A value as an error repeats it: its repr, cut to a readable length (an unknown
    key once echoed 58 MB of its value)."""
    text = repr(value)
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[:MAX_SHOWN - 4]}...{text[-1]} ({len(text)} characters)"


def shown_text(text: str) -> str:
    """A field name from the file (it may be anything a YAML key can be), made printable."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


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
