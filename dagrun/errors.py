"""Errors and exit codes: one enum, one exception family, one boundary (cli.main) that turns
them into a single `dagrun: ...` line on stderr and the exit code below."""
from __future__ import annotations

import enum
import os
import sys


class ExitCode(enum.IntEnum):
    OK = 0
    GOAL_FAILED = 1      # the goal ended with failed/blocked/cancelled tasks; `claim`: goal ended
    USAGE = 2            # bad arguments, invalid plan, unknown goal/task
    NOTHING_READY = 3    # `claim`: nothing is ready yet, try again later
    REFUSED = 4          # the state on disk does not allow it (not the holder, other plan, ...)
    IO = 5               # the file system said no (ENOSPC, EIO, EACCES ...); state is unchanged
    INTERRUPTED = 130    # SIGINT (SIGTERM exits 143, as shells report it)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
            for c in [*range(0x20), 0x7f, *range(0x80, 0xa0), 0x2028, 0x2029]}


def one_line(text: str) -> str:
    """`text` with every control character (C0, DEL, C1, and the Unicode line and paragraph
    separators) escaped as `\\n`, `\\x1b`, `\\u2028`: a name or path taken from a plan, a
    file name or the environment can never break an error line in two or drive a terminal.
    Every error message goes through it (DagrunError, and describe() for the rest)."""
    return text.translate(_ESCAPES)


class DagrunError(Exception):
    """An error the user can act on. `str(e)` is the whole one-line message (control
    characters escaped by one_line)."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(one_line(message))
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


def describe(e: BaseException) -> tuple[int, str | None]:
    """The boundary's table (cli.main and the protocol fast path): an exception -> the exit
    code and the message for the one `dagrun: ...` line (None: print nothing)."""
    if isinstance(e, DagrunError):
        return int(e.exit_code), str(e)
    if isinstance(e, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED), "interrupted"
    if isinstance(e, BrokenPipeError):      # `dagrun events | head`: the reader left
        return 0, None
    if isinstance(e, OSError):
        return int(ExitCode.IO), one_line(f"{e.strerror or e}" + (f": {e.filename}" if getattr(e, "filename", None) else ""))
    return 70, one_line(f"internal error: {type(e).__name__}: {e} (set DAGRUN_DEBUG=1 for a traceback; "
                        f"please report it)")


def report(e: BaseException) -> int:
    """At the boundary: print the exception's one line on stderr, return its exit code.
    DAGRUN_DEBUG=1 re-raises internal errors so the traceback reaches a bug report."""
    code, msg = describe(e)
    if code == 70 and os.environ.get("DAGRUN_DEBUG"):
        raise e
    if isinstance(e, BrokenPipeError):
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    if msg is not None:
        try:
            print(f"dagrun: {msg}", file=sys.stderr)
        except OSError:
            pass
    return code
