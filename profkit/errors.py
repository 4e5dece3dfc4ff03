"""Errors a user sees as one line: the file and what is wrong with it."""
from __future__ import annotations

from pathlib import Path


class ProfkitError(Exception):
    """An error reported to the user as a single line, exit code 2."""

    exit_code = 2


class TraceError(ProfkitError):
    """An input that cannot be used: names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
