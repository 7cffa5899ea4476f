"""Errors that reach the user: each names the file, column, city and year at fault."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One defect in the user's input."""

    file: str
    message: str
    column: str | None = None
    city: str | None = None
    year: int | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.city is not None:
            where.append(f"city {self.city}")
        if self.year is not None:
            where.append(f"year {self.year}")
        return f"{', '.join(where)}: {self.message}"


class BayesNQPError(Exception):
    """Base class of errors reported to the user without a traceback."""


class InputError(BayesNQPError):
    """The user's data, config or weights are unusable; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        super().__init__(f"{len(lines)} problem(s) in the input:\n" + "\n".join(f"  - {x}" for x in lines))


class ConvergenceError(BayesNQPError):
    """Raised under --strict when a fit is flagged by the diagnostics."""
