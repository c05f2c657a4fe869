"""Exception hierarchy and the one-problem-per-line report used by every stage.

A :class:`Problem` names where a user error is (file, line, dotted key), the bad value,
what was expected and how to fix it.  Stages collect problems and raise them together
as a :class:`SpecError`, so a user sees every mistake at once; the CLI prints them
without a traceback and exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["FlopsFitError", "Problem", "SpecError", "DataError", "ContractError", "RunError"]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    """One user-facing problem: where it is, what was found, what is expected."""

    message: str
    key: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None
    value: Any = field(default=None, compare=False)
    has_value: bool = False
    hint: str | None = None

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = where
        if self.key:
            text += f"{self.key}: "
        text += self.message
        if self.has_value:
            text += f" (got {_short(self.value)})"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __str__(self) -> str:
        return self.format()


#: Problems shown before the rest are counted (a CSV with thousands of bad cells stays readable).
SHOWN = 20


class FlopsFitError(Exception):
    """Base class of every error flops-fit raises on purpose (exit code 1 in the CLI)."""

    def __init__(self, problems: Iterable[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self, limit: int = SHOWN) -> list[str]:
        """One line per problem, the first ``limit`` of them, then how many more there are."""
        out = [p.format() for p in self.problems[:limit]]
        if len(self.problems) > limit:
            out.append(f"... and {len(self.problems) - limit} more problems (the first {limit} are shown)")
        return out


class SpecError(FlopsFitError):
    """The spec (or a CSV of points) is invalid; nothing was written."""


class DataError(FlopsFitError):
    """Input data (a CSV of points, a store) cannot be used."""


class ContractError(FlopsFitError):
    """The user's model, data or loss broke the calling contract."""


class RunError(FlopsFitError):
    """An experiment failed in a way that is not divergence."""
