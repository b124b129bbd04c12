"""The `dagrun` command. A bash loop pays its start-up per task, so the protocol commands
(claim/complete/fail/heartbeat) are parsed by protocol.py's strict little parser and run
without importing typer, rich or watchdog; anything it does not fully understand -- other
commands, --help, a bad argument -- goes to the typer app (cli), the reference for parsing,
help and errors. Kept apart from both so that neither imports the other."""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from .protocol import parse_fast, run_fast

    parsed = None if os.environ.get("DAGRUN_NO_FAST_PATH") else parse_fast(argv)
    if parsed is None:
        from .cli import main as full
        full(argv)
        return
    run_fast(parsed)
