"""Problems found in a policy, and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Literal, TypeAlias

from governor.errors import GovernorError

Severity: TypeAlias = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or doubtful) in a policy file.

    ``key`` is the dotted TOML path (``tenants.acme.groups.web.memory.max``; array items as
    ``match[0]``), ``line`` the 1-based line when it could be found unambiguously.
    """

    file: str
    key: str
    value: object
    message: str
    line: int | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        parts = [where] if where else []
        if self.key:
            parts.append(self.key)
        prefix = "warning: " if self.severity == "warning" else ""
        parts.append(prefix + self.message)
        return ": ".join(parts)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict with a fixed set of keys."""
        return {
            "file": self.file,
            "line": self.line,
            "key": self.key,
            "value": jsonable(self.value),
            "message": self.message,
            "severity": self.severity,
        }


def jsonable(value: object) -> object:
    """Make a TOML value JSON-serialisable (datetimes as ISO strings, Decimals as strings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return repr(value)


class PolicyInvalid(GovernorError):
    """The policy has errors: ``problems`` lists every one, warnings too, in file order."""

    exit_code = 1

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        head = f"policy invalid: {len(errors)} error{'s' if len(errors) != 1 else ''}"
        super().__init__("\n".join([head, *(str(p) for p in problems)]))

    @property
    def errors(self) -> list[Problem]:
        """Only the problems of severity "error"."""
        return [p for p in self.problems if p.severity == "error"]
