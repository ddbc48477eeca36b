"""Errors flip reports to users as short messages instead of stack traces."""

from __future__ import annotations


class FlipError(Exception):
    """A problem the user can fix; its message is shown as is. Exit status 1."""

    exit_code = 1


class DataError(FlipError, ValueError):
    """A site's data cannot be used as configured (too few items, an unreadable manifest): the
    message names the path and the setting to change."""


class MissingData(DataError, FileNotFoundError):
    """A folder or file the data settings name does not exist."""


class ConfigError(FlipError):
    """One or more configuration problems, each on its own line. Exit status 2."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = list(problems)
        self.source = source
        header = f"invalid config{f' ({source})' if source else ''}: {len(self.problems)} problem(s)"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))
