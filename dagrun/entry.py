"""The `dagrun` command. A bash loop pays its start-up per task, so the protocol commands
(claim/complete/fail/heartbeat) are parsed by protocol.py's strict little parser and run
without importing typer, rich or watchdog; anything it does not fully understand -- other
commands, --help, a bad argument -- goes to the typer app (cli), the reference for parsing,
help and errors. Kept apart from both so that neither imports the other.

A fast-path command run as the process's own command line (the console script: argv None)
ends with os._exit once its output is flushed: the interpreter's finalization -- tearing
down ~150 modules, nothing of which writes a file -- was 10-20 ms of every call (measured,
docs/performance.md "Start-up of `dagrun run`"). Called with an argv (a library, the tests'
probes), or under a profiler or tracer, it raises SystemExit as before."""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    own = argv is None
    from . import bulk
    if own:                        # the process is this command's (not a library's, a test's)
        bulk.start_up()            # the collector off while the imports build it
    if sys.stdin is None or sys.stdout is None or sys.stderr is None:
        _null_std_fds()
    argv = sys.argv[1:] if argv is None else argv
    from .protocol import parse_fast, run_fast

    parsed = None if os.environ.get("DAGRUN_NO_FAST_PATH") else parse_fast(argv)
    if parsed is None:
        bulk.settled()             # typer's commands include long-lived ones (worker, watch)
        from .cli import main as full
        full(argv)
        return
    if parsed[1] == "mcp":
        bulk.settled()             # a server: lives until its client goes
    if not own or parsed[1] == "mcp" or _watched():
        # mcp: the SDK's threads and streams end their own way; a profiler or tracer
        # (cProfile, bench/loop_calls.py, coverage) writes its results after we return
        run_fast(parsed)
        return
    try:
        run_fast(parsed)
    except SystemExit as e:
        _exit_now(e.code)


def _null_std_fds() -> None:
    """Started with stdin, stdout or stderr closed (`dagrun status >&-`): Python then has no
    sys.stdout, and the first file dagrun opens would get fd 1 -- which a child inherits as
    its stdout. Put /dev/null on each closed one (lowest first, so os.open lands on it), as
    daemons do: the command's output is discarded, as with `>/dev/null`, never a traceback."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _watched() -> bool:
    """Is a profiler or tracer on: sys.setprofile/settrace, or (Python 3.12+) a tool of
    sys.monitoring -- coverage's "sysmon" core, which saves its data at exit?"""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    mon = getattr(sys, "monitoring", None)
    return mon is not None and any(mon.get_tool(i) is not None for i in range(6))


def _exit_now(code) -> None:
    """sys.exit(code) without the interpreter's finalization: wait for the threads that are
    not daemons (hooks.py runs a transition's hooks on one: `dagrun complete` and `dagrun run`
    wait for them, as the interpreter's exit does), flush what was written to stdout and
    stderr, then os._exit. Every file dagrun writes is closed (and published by rename)
    before the command returns; the other threads left are daemons (the spawners).
    Ctrl-C while hooks run: exit 130 at once (their records stay: the next engine runs them)."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        try:
            print(code, file=sys.stderr)
        except Exception:  # noqa: BLE001
            pass
        code = 1
    try:
        _join_threads()
    except KeyboardInterrupt:
        code = 130                 # ExitCode.INTERRUPTED
        try:
            print("dagrun: interrupted", file=sys.stderr)
        except Exception:  # noqa: BLE001
            pass
    sinks = sys.modules.get("dagrun.linesink")
    if sinks is not None:
        sinks.finish()             # lines still waiting for a reader of a pipe: a bounded wait
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: nothing more to say
            if stream is sys.stdout and code == 0:
                code = 5           # ExitCode.IO, as run_fast's own flush says
    os._exit(code)


def _join_threads() -> None:
    """Join every live non-daemon thread but this one, and those they start meanwhile (what
    threading._shutdown does at the interpreter's exit)."""
    threading = sys.modules.get("threading")
    if threading is None:          # never imported: no thread was started
        return
    me = threading.current_thread()
    while True:
        left = [t for t in threading.enumerate() if t is not me and not t.daemon]
        if not left:
            return
        for t in left:
            t.join()
