"""One exception type for everything a user can fix; the CLI prints it as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input (spec, data file, reference), already phrased for them.

    The message is one line: ``file:line: key: expected ..., got ...`` where a location applies.
    """


def located(path: str, line: int | None, key: str, problem: str) -> UserError:
    """Build a UserError in the house format ``file:line: key: problem``."""
    where = f"{path}:{line}" if line is not None else str(path)
    return UserError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class RunFailed(UserError):
    """A training run that failed on its workers: one line naming the cause and how to resume.

    The full traceback stays in the Ray logs (and with ``--debug``)."""
