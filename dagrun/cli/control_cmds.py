"""cancel, retry, budget."""
from __future__ import annotations

import getpass
import socket

import typer

from . import app
from .common import CONTROL, GOAL_ARG, JSON_OPT, complete_task, examples, home_of, print_json


def _me() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


@app.command(rich_help_panel=CONTROL, epilog=examples(
    "dagrun cancel add-auth                       # every unfinished task",
    "dagrun cancel add-auth test --reason 'not needed'"))
def cancel(ctx: typer.Context,
           goal: str = GOAL_ARG,
           task: str = typer.Argument(None, metavar="TASK", help="Cancel only this task (its dependents become blocked).",
                                      autocompletion=complete_task),
           reason: str = typer.Option("", "--reason", metavar="TEXT", help="Recorded in the cancelled markers and events."),
           wait: float = typer.Option(None, "--wait", min=0, metavar="SECONDS",
                                      help="How long to wait for running agents to be gone "
                                           "(default: their kill_grace + 5 s)."),
           json: bool = JSON_OPT):
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
    if not r.cancelled and not r.stopped and not r.still_running and not r.external:
        from ..status import goal_overview
        st = goal_overview(home_of(ctx), goal)["state"]
        what = f"{goal}/{task}" if task else f"goal {goal}"
        if st in ("done", "failed", "cancelled"):
            print(f"dagrun: nothing to cancel: goal {goal} had already ended ({st})", file=sys.stderr)
        else:
            print(f"dagrun: nothing to cancel in {what}: everything there has ended", file=sys.stderr)
    for t in r.external:
        print(f"dagrun: {goal}/{t} is held by a script: it stops on its next `dagrun heartbeat`", file=sys.stderr)
    for t in r.still_running:
        print(f"dagrun: warning: {goal}/{t}: its agent is still running after the wait "
              f"(is its worker stuck? `dagrun status {goal}` shows the holder)", file=sys.stderr)


@app.command(rich_help_panel=CONTROL, epilog=examples(
    "dagrun retry add-auth                        # every failed and cancelled task",
    "dagrun retry add-auth test --cascade         # it and the failed/cancelled tasks below it",
    "dagrun retry --force add-auth design-schema  # redo a done task and everything downstream"))
def retry(ctx: typer.Context,
          goal: str = GOAL_ARG,
          task: str = typer.Argument(None, metavar="TASK", help="The task (default: every failed or cancelled task).",
                                     autocompletion=complete_task),
          cascade: bool = typer.Option(False, "--cascade", help="Also reset failed/cancelled tasks below it."),
          force: bool = typer.Option(False, "--force", help="Redo a done task and everything below it "
                                     "(their results are archived)."),
          json: bool = JSON_OPT):
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


@app.command(rich_help_panel=CONTROL, epilog=examples(
    "dagrun budget add-auth                       # the pool, what was spent, what it holds",
    "dagrun budget add-auth --add 5               # $5 more: the held tasks go on",
    "dagrun budget add-auth --add-tokens 200000 --json"))
def budget(ctx: typer.Context,
           goal: str = GOAL_ARG,
           add: float = typer.Option(0.0, "--add", min=0, metavar="USD", help="Raise the pool by USD dollars."),
           add_tokens: int = typer.Option(0, "--add-tokens", min=0, metavar="N", help="Raise the token pool by N."),
           json: bool = JSON_OPT):
    """Show a goal's budget pool and spend; --add raises it (running workers pick it up and
    start the tasks it held)."""
    from ..budget import fmt
    from ..control import goal_budget
    from ..plan import check_id

    check_id("goal", goal)
    r = goal_budget(home_of(ctx), goal, add_usd=add, add_tokens=add_tokens,
                    by=_me())
    if json:
        print_json(r)
        return
    print(f"goal {goal}: spent {fmt(r['spent'], r['pool'])} of {fmt(r['pool'])}"
          + (f" (plan {fmt(r['plan_budget'])} + added {fmt(r['added'])})" if r["added"] else ""))
    if r["held"]:
        print(f"held by the budget: {' '.join(r['held'])}")
