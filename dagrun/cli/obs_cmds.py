"""events (the state bus as JSON lines, like `tail -f events.jsonl | jq -c`) and watch (a live
view that redraws on events)."""
from __future__ import annotations

import sys

import typer

from . import app
from .common import INSPECT, POLL_OPT, complete_goal, examples, home_of, is_tty


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun events add-auth                         # the whole log, one JSON object a line",
    "dagrun events add-auth -f --type goal.finished # wait for the goal to end",
    "dagrun events --all --since 15m | jq -c '{goal, task, status}'"))
def events(ctx: typer.Context,
           goal: str = typer.Argument(None, metavar="GOAL", help="Goal id (or --all).", autocompletion=complete_goal),
           all_: bool = typer.Option(False, "--all", help="Every goal under the home; with -f, goals submitted "
                                     "later join."),
           follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new events as they are appended."),
           since: str = typer.Option(None, "--since", metavar="TS",
                                     help="Only events at or after TS: ISO time (UTC unless it has an offset), "
                                          "Unix time, or an age like 15m, 2h, 1d."),
           type_: list[str] = typer.Option(None, "--type", metavar="TYPE",
                                           help="Only these event types (repeatable; a suffix like task.blocked "
                                                "or goal.finished works)."),
           poll: float = POLL_OPT):
    """Print events, one JSON object per line: a goal's, or every goal's with --all."""
    import orjson

    from ..errors import UsageError
    from ..events import ALL_TYPES, Follower, matcher, parse_since
    from ..plan import check_id

    for t in type_ or []:
        if not any(x == t or x.endswith("." + t) for x in ALL_TYPES):
            raise UsageError(f"--type {t!r}: no such event type; known: {', '.join(ALL_TYPES)} "
                             f"(or a suffix of one, such as task.blocked or goal.finished)")

    if (goal is None) == (not all_):
        raise UsageError("give a GOAL or --all (not both)" if goal else "give a GOAL, or --all for every goal")
    home = home_of(ctx)
    if goal is not None:
        check_id("goal", goal)
        home.load_plan(goal)     # a clear error for an unknown goal
    ok = matcher(parse_since(since) if since else None, type_)
    fol = Follower(home, goal, start="begin", poll=poll, watch=follow)
    out = sys.stdout.buffer
    try:
        while True:
            for e in fol.read():
                if ok(e):
                    out.write(orjson.dumps(e) + b"\n")
            out.flush()
            if not follow:
                return
            fol.wait()
    finally:
        fol.close()


@app.command(rich_help_panel=INSPECT, epilog=examples(
    "dagrun watch                # the only unfinished goal, else every goal",
    "dagrun watch add-auth && echo all done"))
def watch(ctx: typer.Context,
          goal: str = typer.Argument(None, metavar="GOAL", help="Goal id (default: the only unfinished goal, "
                                     "else an overview of every goal).", autocompletion=complete_goal),
          poll: float = POLL_OPT):
    """A live view that redraws on state changes (not on a timer) and exits when the goal
    ends: exit 0 if it ended done, 1 if not. Off a terminal: one line per event."""
    from ..status import goal_overview
    from ..plan import check_id

    home = home_of(ctx)
    if goal is None:
        active = [g for g in home.goals() if goal_overview(home, g)["state"] not in ("done", "failed", "cancelled")]
        if len(active) == 1:
            goal = active[0]
    tty = is_tty()
    if goal is not None:
        check_id("goal", goal)
        home.load_plan(goal)
        from .live import watch_goal
        rc = watch_goal(home, goal, tty=tty, poll=poll)
    else:
        from .live import watch_all
        rc = watch_all(home, tty=tty, poll=poll)
    raise typer.Exit(rc)
