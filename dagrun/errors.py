"""Errors and exit codes: one enum, one exception family, one boundary (cli.main) that turns
them into a single `dagrun: ...` line on stderr and the exit code below."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    GOAL_FAILED = 1      # the goal ended with failed/blocked/cancelled tasks; `claim`: goal ended
    USAGE = 2            # bad arguments, invalid plan, unknown goal/task
    NOTHING_READY = 3    # `claim`: nothing is ready yet, try again later
    REFUSED = 4          # the state on disk does not allow it (not the holder, other plan, ...)
    IO = 5               # the file system said no (ENOSPC, EIO, EACCES ...); state is unchanged
    INTERRUPTED = 130    # SIGINT (SIGTERM exits 143, as shells report it)


class DagrunError(Exception):
    """An error the user can act on. `str(e)` is the whole one-line message."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class PlanError(DagrunError):
    """The plan is invalid; the message names file, line, JSON path and problem."""


class UsageError(DagrunError):
    pass


class NotFound(DagrunError):
    pass


class Refused(DagrunError):
    exit_code = ExitCode.REFUSED


class FsError(DagrunError):
    exit_code = ExitCode.IO


def os_error(action: str, path: str, err: OSError) -> FsError:
    """`cannot write goals/g/tasks/t/done: No space left on device` -- one shape for every OS error."""
    reason = err.strerror or str(err)
    return FsError(f"cannot {action} {path}: {reason}")
