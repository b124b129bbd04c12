"""cancel, retry."""
from __future__ import annotations

import getpass
import socket

import typer

from . import app
from .common import home_of, print_json


def _me() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


@app.command()
def cancel(ctx: typer.Context,
           goal: str = typer.Argument(..., help="Goal id."),
           task: str = typer.Argument(None, help="Cancel only this task (its dependents become blocked)."),
           reason: str = typer.Option("", "--reason", help="Recorded in the cancelled markers and events."),
           wait: float = typer.Option(None, "--wait", min=0, metavar="SECONDS",
                                      help="How long to wait for running agents to be gone "
                                           "(default: their kill_grace + 5 s)."),
           json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Cancel a goal (every unfinished task) or one task. Running agents are terminated as
    process groups (TERM, kill_grace, KILL); returns when they are gone. Prints the tasks
    it cancelled."""
    import sys

    from ..control import cancel as do_cancel
    from ..plan import check_id

    check_id("goal", goal)
    r = do_cancel(home_of(ctx), goal, task, by=_me(), reason=reason, wait=wait)
    if json:
        print_json({"goal": goal, "cancelled": r.cancelled, "stopped": r.stopped,
                    "still_running": r.still_running, "external": r.external})
    else:
        for t in r.cancelled:
            print(t)
    for t in r.external:
        print(f"dagrun: {goal}/{t} is held by a script: it stops on its next `dagrun heartbeat`", file=sys.stderr)
    for t in r.still_running:
        print(f"dagrun: warning: {goal}/{t}: its agent is still running after the wait "
              f"(is its worker stuck? `dagrun status {goal}` shows the holder)", file=sys.stderr)


@app.command()
def retry(ctx: typer.Context,
          goal: str = typer.Argument(..., help="Goal id."),
          task: str = typer.Argument(None, help="The task (default: every failed or cancelled task)."),
          cascade: bool = typer.Option(False, "--cascade", help="Also reset failed/cancelled tasks below it."),
          force: bool = typer.Option(False, "--force", help="Redo a done task and everything below it "
                                     "(their results are archived)."),
          json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Run failed / cancelled tasks again with a fresh attempt and retry budget. A running
    worker picks them up; otherwise `dagrun run GOAL`."""
    from ..control import retry as do_retry
    from ..plan import check_id

    check_id("goal", goal)
    done = do_retry(home_of(ctx), goal, task, cascade=cascade, force=force, by=_me())
    if json:
        print_json({"goal": goal, "reset": done})
    else:
        for t in done:
            print(t)
